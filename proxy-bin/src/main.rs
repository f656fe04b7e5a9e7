//! `authproxy`: authenticates people in front of a Kubernetes API server and
//! forwards their requests with impersonation headers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use authproxy::config::{FileConfig, LogFormat};
use authproxy::{demo, logging, server};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "authproxy",
    version,
    about = "Authentication and impersonation proxy for the Kubernetes API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and report every problem.
    CheckConfig {
        /// The configuration file (YAML).
        file: PathBuf,
    },
    /// Run the proxy in front of an embedded demo API server, and print
    /// commands that show it at work.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("authproxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("authproxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig { file } => {
            FileConfig::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Serve { config: path } => {
            let config = FileConfig::load(&path)?;
            logging::init(config.logging.format, config.logging.level.as_deref());
            let mut running = server::start(&config, &config.base_dir(&path))
                .await
                .with_context(|| format!("{}", path.display()))?;
            let trigger = running.trigger();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("signal received");
                if let Some(trigger) = trigger {
                    let _ = trigger.send(());
                }
            });
            running.wait().await;
            Ok(())
        }
        Command::Demo { listen } => {
            logging::init(LogFormat::Text, Some("warn"));
            let running = match demo::Demo::start(listen).await {
                Ok(running) => running,
                Err(demo::DemoError::Start(server::StartError::Bind { addr, source })) => {
                    eprintln!(
                        "authproxy: {addr} is not free ({source}); using a free port instead"
                    );
                    demo::Demo::start(SocketAddr::new(addr.ip(), 0)).await?
                }
                Err(error) => return Err(error.into()),
            };
            println!("{}", running.instructions());
            shutdown_signal().await;
            running.shutdown().await;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
