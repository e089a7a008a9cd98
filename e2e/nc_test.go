package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestNC: `ipipstack nc -c FILE` as a user runs it, an HTTP/1.0 request on
// stdin through A's SOCKS5 proxy to B's reverse "web": the response on
// stdout carries the blob byte-exact, and nc exits 0 when the server
// closes.
func TestNC(t *testing.T) {
	t.Parallel()
	p := startPeers(t, peerOptions{blobSize: 1 << 20})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "nc", "-c", p.cfgA, "10.99.0.2", "80")
	cmd.Env = env()
	cmd.Stdin = strings.NewReader("GET /blob HTTP/1.0\r\nHost: 10.99.0.2\r\n\r\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ipipstack nc: %v\n%s", err, stderr.Bytes())
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), nil)
	if err != nil {
		t.Fatalf("nc's stdout is not an HTTP response: %v\n%.200q", err, out)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || sha256.Sum256(body) != sha256.Sum256(p.blob) {
		t.Errorf("through nc: %s, %d bytes, %v; want 200 and the %d-byte blob", resp.Status, len(body), err, len(p.blob))
	}
}

// TestNCSSH: a real ssh client with ProxyCommand='ipipstack nc -c FILE %h
// %p' reaches an SSH server behind B's reverse "web" (10.99.0.2:80), sends
// 1 MiB on the session's stdin, and gets back its SHA-256 and exit status
// 0.
func TestNCSSH(t *testing.T) {
	t.Parallel()
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		t.Skip("no ssh client (Debian's openssh-client):", err)
	}
	p := startPeers(t, peerOptions{webB: sshServer(t)})
	data := make([]byte, 1<<20)
	rand.Read(data)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sshBin, "-F", "/dev/null", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
		"-o", "ProxyCommand="+bin+" nc -c "+p.cfgA+" %h %p", "-p", "80", "test@10.99.0.2", "sha256")
	cmd.Env = append(env(), "HOME="+t.TempDir())
	cmd.Stdin = bytes.NewReader(data)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ssh through ipipstack nc: %v\n%s", err, stderr.Bytes())
	}
	if want := fmt.Sprintf("%x\n", sha256.Sum256(data)); string(out) != want {
		t.Errorf("ssh printed %q, want %q (the SHA-256 of what it sent)", out, want)
	}
}

// sshServer serves SSH on 127.0.0.1 without authentication: an exec
// request reads the session's stdin to its end and answers its SHA-256
// in hex. It returns the address.
func sshServer(t *testing.T) string {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{NoClientAuth: true}
	cfg.AddHostKey(signer)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
				if err != nil {
					t.Logf("ssh server: handshake: %v", err)
					return
				}
				defer sc.Close()
				go ssh.DiscardRequests(reqs)
				for nc := range chans {
					if nc.ChannelType() != "session" {
						nc.Reject(ssh.UnknownChannelType, "sessions only")
						continue
					}
					ch, creqs, err := nc.Accept()
					if err != nil {
						return
					}
					go serveSession(ch, creqs)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func serveSession(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for req := range reqs {
		if req.Type != "exec" {
			req.Reply(false, nil)
			continue
		}
		req.Reply(true, nil)
		h := sha256.New()
		io.Copy(h, ch)
		fmt.Fprintf(ch, "%x\n", h.Sum(nil))
		ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{0}))
		return
	}
}
