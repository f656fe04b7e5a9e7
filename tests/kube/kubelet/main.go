// Command kubelet serves the kubelet's streaming endpoints for the end-to-end
// tests, with kube's own streaming code (k8s.io/cri-streaming, which the
// kubelet and the container runtimes run): exec, attach and port-forward over
// SPDY and WebSocket, and container logs with follow.
//
// The protocol is kube's; this file is only the glue a container runtime
// would be: a "container" is a scratch folder per pod under --root in which
// commands run as local processes (so sh, tar and cat work, as kubectl cp
// needs), with a pseudo-terminal when a TTY is asked for. Port-forward
// connects the pod's port P to 127.0.0.1:P. A container's log is the file
// <root>/<namespace>/<pod>/<container>.log: its main process (--main, `cat`
// by default, started on the first attach) writes its output there, and
// anyone may append to it; logs with follow=true tail it.
//
// It serves TLS and requires a client certificate signed by --client-ca,
// which kube-apiserver presents with --kubelet-client-certificate.
//
// Usage:
//
//	kubelet --listen 127.0.0.1:10250 --cert tls.crt --key tls.key --client-ca ca.crt --root DIR
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/creack/pty"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// The kubelet's defaults (streamingConnectionIdleTimeout, and the stream
// creation timeout of the CRI streaming server).
const (
	idleTimeout           = 4 * time.Hour
	streamCreationTimeout = remotecommand.DefaultStreamCreationTimeout
	// How often a followed log is checked for new lines.
	followInterval = 20 * time.Millisecond
)

// A namespace, pod or container name: a DNS label or subdomain, so it is
// safe as one path segment.
var validName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

func main() {
	listen := flag.String("listen", "127.0.0.1:10250", "address to serve on")
	cert := flag.String("cert", "", "serving certificate (PEM)")
	key := flag.String("key", "", "serving key (PEM)")
	clientCA := flag.String("client-ca", "", "CA that signs the client certificates kube-apiserver presents (PEM)")
	root := flag.String("root", "", "folder holding one scratch folder per pod")
	mainCommand := flag.String("main", "cat", "each container's main process (run by sh -c in the pod's folder; attach and the log see it)")
	flag.Parse()
	if *cert == "" || *key == "" || *clientCA == "" || *root == "" {
		log.Fatal("--cert, --key, --client-ca and --root are required")
	}
	caPEM, err := os.ReadFile(*clientCA)
	if err != nil {
		log.Fatalf("reading --client-ca: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		log.Fatalf("--client-ca %s holds no certificate", *clientCA)
	}
	k := &kubelet{root: *root, main: *mainCommand, containers: map[string]*container{}}
	server := &http.Server{
		Handler: k.routes(),
		TLSConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			ClientAuth: tls.RequireAndVerifyClientCert,
			ClientCAs:  pool,
		},
		ReadHeaderTimeout: 10 * time.Second,
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listening on %s: %v", *listen, err)
	}
	log.Printf("serving on %s", ln.Addr())
	log.Fatal(server.ServeTLS(ln, *cert, *key))
}

// kubelet holds the pods' containers that have a main process.
type kubelet struct {
	root       string
	main       string
	mu         sync.Mutex
	containers map[string]*container
}

func (k *kubelet) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("/exec/{ns}/{pod}/{container}", k.serveExec)
	mux.HandleFunc("/exec/{ns}/{pod}/{uid}/{container}", k.serveExec)
	mux.HandleFunc("/attach/{ns}/{pod}/{container}", k.serveAttach)
	mux.HandleFunc("/attach/{ns}/{pod}/{uid}/{container}", k.serveAttach)
	mux.HandleFunc("/portForward/{ns}/{pod}", k.servePortForward)
	mux.HandleFunc("/portForward/{ns}/{pod}/{uid}", k.servePortForward)
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", k.serveLogs)
	return mux
}

// podDir is the pod's scratch folder, created on first use; the names come
// from the request path and are checked before they become a path.
func (k *kubelet) podDir(r *http.Request, names ...string) (string, bool) {
	for _, n := range names {
		if !validName.MatchString(r.PathValue(n)) {
			return "", false
		}
	}
	dir := filepath.Join(k.root, r.PathValue("ns"), r.PathValue("pod"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", false
	}
	return dir, true
}

func (k *kubelet) serveExec(w http.ResponseWriter, r *http.Request) {
	dir, ok := k.podDir(r, "ns", "pod", "container")
	if !ok {
		http.Error(w, "bad pod or container name", http.StatusBadRequest)
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cmd := r.URL.Query()["command"]
	remotecommand.ServeExec(w, r, executor{dir: dir}, r.PathValue("pod"), r.PathValue("uid"), r.PathValue("container"),
		cmd, opts, idleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (k *kubelet) serveAttach(w http.ResponseWriter, r *http.Request) {
	dir, ok := k.podDir(r, "ns", "pod", "container")
	if !ok {
		http.Error(w, "bad pod or container name", http.StatusBadRequest)
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	remotecommand.ServeAttach(w, r, attacher{k: k, dir: dir}, r.PathValue("pod"), r.PathValue("uid"), r.PathValue("container"),
		opts, idleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (k *kubelet) servePortForward(w http.ResponseWriter, r *http.Request) {
	if _, ok := k.podDir(r, "ns", "pod"); !ok {
		http.Error(w, "bad pod name", http.StatusBadRequest)
		return
	}
	// As the kubelet: a WebSocket request names its ports in the query, a
	// SPDY one in each stream's headers.
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, loopbackForwarder{}, r.PathValue("pod"), r.PathValue("uid"), opts,
		idleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// serveLogs writes the container's log file; with follow=true it keeps
// writing what is appended until the client goes away.
func (k *kubelet) serveLogs(w http.ResponseWriter, r *http.Request) {
	dir, ok := k.podDir(r, "ns", "pod", "container")
	if !ok {
		http.Error(w, "bad pod or container name", http.StatusBadRequest)
		return
	}
	f, err := os.OpenFile(filepath.Join(dir, r.PathValue("container")+".log"), os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	buf := make([]byte, 32*1024)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) || !follow {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(followInterval):
		}
	}
}

// executor runs a command as a local process in the pod's folder.
type executor struct{ dir string }

func (e executor) ExecInContainer(ctx context.Context, _ string, _ string, _ string, argv []string, in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	if len(argv) == 0 {
		return errors.New("no command given")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = e.dir
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + e.dir}
	if tty {
		cmd.Env = append(cmd.Env, "TERM=xterm")
		return exitError(runWithTerminal(ctx, cmd, in, out, resize))
	}
	if out != nil {
		cmd.Stdout = out
	}
	if errOut != nil {
		cmd.Stderr = errOut
	}
	if in != nil {
		// Not cmd.Stdin: Wait would wait for the client's stdin to end even
		// after the process has exited.
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		go func() {
			_, _ = io.Copy(stdin, in)
			_ = stdin.Close()
		}()
	}
	return exitError(cmd.Run())
}

// runWithTerminal runs cmd on a new pseudo-terminal, resized as the client
// asks, until it exits and its output is drained.
func runWithTerminal(ctx context.Context, cmd *exec.Cmd, in io.Reader, out io.Writer, resize <-chan remotecommand.TerminalSize) error {
	terminal, err := pty.Start(cmd)
	if err != nil {
		return err
	}
	defer terminal.Close()
	go func() {
		for size := range resize {
			_ = pty.Setsize(terminal, &pty.Winsize{Rows: size.Height, Cols: size.Width})
		}
	}()
	if in != nil {
		go func() { _, _ = io.Copy(terminal, in) }()
	}
	drained := make(chan struct{})
	go func() {
		if out != nil {
			_, _ = io.Copy(out, terminal) // ends with EIO once the process and its terminal are gone
		} else {
			_, _ = io.Copy(io.Discard, terminal)
		}
		close(drained)
	}()
	err = cmd.Wait()
	select {
	case <-drained:
	case <-ctx.Done():
	}
	return err
}

// exitError gives a process's exit status the form ServeExec reports as the
// command's exit code.
func exitError(err error) error {
	var exited *exec.ExitError
	if errors.As(err, &exited) {
		return &utilexec.ExitErrorWrapper{ExitError: exited}
	}
	return err
}

// loopbackForwarder connects the pod's port P to 127.0.0.1:P.
type loopbackForwarder struct{}

func (loopbackForwarder) PortForward(ctx context.Context, _ string, _ string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("connecting to port %d: %w", port, err)
	}
	defer conn.Close()
	// The client's end of the stream half-closes the connection; the
	// forward is done when the port's side is, or the request is gone.
	go func() {
		_, _ = io.Copy(conn, stream)
		if tcp, ok := conn.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
	}()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(stream, conn)
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}
