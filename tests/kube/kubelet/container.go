package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

// container is a container's main process: its stdin is shared by the
// attached clients, its output goes to the container's log file and to
// every attached client, as a container runtime does.
type container struct {
	stdin io.WriteCloser
	// closed when the main process has exited
	exited chan struct{}

	mu       sync.Mutex
	attached map[*attachment]struct{}
}

// attachment is one attached client's output.
type attachment struct {
	out io.Writer
	// closed when a write to out failed: the client is gone
	gone chan struct{}
}

// container returns the running main process of the container in dir,
// starting it if it is not running.
func (k *kubelet) container(dir, name string) (*container, error) {
	key := filepath.Join(dir, name)
	k.mu.Lock()
	defer k.mu.Unlock()
	if c, ok := k.containers[key]; ok {
		select {
		case <-c.exited:
		default:
			return c, nil
		}
	}
	logFile, err := os.OpenFile(key+".log", os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("sh", "-c", k.main)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + dir}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	output, writeEnd, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = writeEnd, writeEnd
	if err := cmd.Start(); err != nil {
		logFile.Close()
		output.Close()
		writeEnd.Close()
		return nil, err
	}
	writeEnd.Close()
	c := &container{stdin: stdin, exited: make(chan struct{}), attached: map[*attachment]struct{}{}}
	go c.copyOutput(output, logFile)
	go func() {
		_ = cmd.Wait()
		close(c.exited)
	}()
	k.containers[key] = c
	return c, nil
}

// copyOutput writes the main process's output to the log and to every
// attached client until the process and its children close it.
func (c *container) copyOutput(output, logFile *os.File) {
	defer output.Close()
	defer logFile.Close()
	buf := make([]byte, 32*1024)
	for {
		n, err := output.Read(buf)
		if n > 0 {
			_, _ = logFile.Write(buf[:n])
			c.mu.Lock()
			for a := range c.attached {
				if _, werr := a.out.Write(buf[:n]); werr != nil {
					delete(c.attached, a)
					close(a.gone)
				}
			}
			c.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// attacher attaches clients to the main process of a container in the
// pod's folder.
type attacher struct {
	k   *kubelet
	dir string
}

// AttachContainer streams the main process's output to out and, when the
// client sends stdin, the client's stdin to the process, until the client's
// stdin ends, the client is gone, or the process exits. The main process
// has no terminal: a TTY request is served without one.
func (a attacher) AttachContainer(ctx context.Context, _ string, _ string, name string, in io.Reader, out, _ io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize) error {
	c, err := a.k.container(a.dir, name)
	if err != nil {
		return err
	}
	at := &attachment{out: io.Discard, gone: make(chan struct{})}
	if out != nil {
		at.out = out
	}
	c.mu.Lock()
	c.attached[at] = struct{}{}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.attached, at)
		c.mu.Unlock()
	}()
	inputEnded := make(chan struct{})
	if in != nil {
		go func() {
			_, _ = io.Copy(c.stdin, in)
			close(inputEnded)
		}()
	}
	select {
	case <-inputEnded:
	case <-at.gone:
	case <-c.exited:
	case <-ctx.Done():
	}
	return nil
}
