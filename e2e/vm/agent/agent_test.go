package main

import (
	"context"
	"net"
	"net/rpc"
	"net/rpc/jsonrpc"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpr-proxy/kpr/e2e/echo"
	"github.com/kpr-proxy/kpr/e2e/vm/agentapi"
)

// The agent's RPCs that need no namespace run on the host just as in the
// guest: these tests drive them through the real protocol (JSON-RPC over a
// stream, as over the virtio port) with agentapi.Client.
func newPair(t *testing.T) (*agent, *agentapi.Client) {
	t.Helper()
	a := newAgent()
	a.logDir = t.TempDir()
	srv := rpc.NewServer()
	if err := srv.RegisterName(agentapi.Service, a); err != nil {
		t.Fatal(err)
	}
	host, guest := net.Pipe()
	go srv.ServeCodec(jsonrpc.NewServerCodec(guest))
	c := agentapi.NewClient(host)
	t.Cleanup(func() { c.Close() })
	return a, c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestExec(t *testing.T) {
	_, c := newPair(t)
	r, err := c.Exec(ctx(t), agentapi.ExecArgs{Argv: []string{"sh", "-c", "read x; echo got $x; echo $FOO >&2"}, Stdin: "in\n", Env: []string{"FOO=bar"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Output != "got in\nbar\n" || r.ExitCode != 0 {
		t.Errorf("reply %+v", r)
	}
	r, err = c.Exec(ctx(t), agentapi.ExecArgs{Argv: []string{"sh", "-c", "echo oops; exit 3"}})
	if err == nil || r.ExitCode != 3 || !strings.Contains(err.Error(), "oops") {
		t.Errorf("failing command: reply %+v, err %v", r, err)
	}
	r, err = c.Exec(ctx(t), agentapi.ExecArgs{Argv: []string{"sleep", "10"}, Timeout: 200 * time.Millisecond})
	if err == nil || !strings.Contains(r.Err, "killed") {
		t.Errorf("timeout: reply %+v, err %v", r, err)
	}
	if _, err := c.Exec(ctx(t), agentapi.ExecArgs{Argv: []string{"/nonexistent/program"}}); err == nil {
		t.Error("missing program: no error")
	}
}

func TestStartStopStatus(t *testing.T) {
	_, c := newPair(t)
	if _, err := c.Start(ctx(t), agentapi.StartArgs{Name: "bad/name", Argv: []string{"true"}}); err == nil {
		t.Error("bad name: no error")
	}
	sr, err := c.Start(ctx(t), agentapi.StartArgs{Name: "sleeper", Argv: []string{"sh", "-c", "echo hello; exec sleep 30"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Start(ctx(t), agentapi.StartArgs{Name: "sleeper", Argv: []string{"true"}}); err == nil {
		t.Error("second start while running: no error")
	}
	st, err := c.Status(ctx(t), "sleeper")
	if err != nil || !st.Running || st.Pid != sr.Pid || st.Starts != 1 {
		t.Fatalf("status %+v, %v", st, err)
	}
	st, err = c.Stop(ctx(t), agentapi.StopArgs{Name: "sleeper", Grace: 2 * time.Second})
	if err != nil || st.Running || st.Exit == "" {
		t.Fatalf("after stop: %+v, %v", st, err)
	}
	// Restart appends to the same log with a marker per start.
	if _, err := c.Start(ctx(t), agentapi.StartArgs{Name: "sleeper", Argv: []string{"sh", "-c", "echo again"}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ = c.Status(ctx(t), "sleeper")
		if !st.Running || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	log, err := c.ReadFile(ctx(t), st.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(log); strings.Count(s, "==== agent: start #") != 2 || !strings.Contains(s, "hello") || !strings.Contains(s, "again") {
		t.Errorf("log:\n%s", s)
	}
	if _, err := c.Status(ctx(t), "nobody"); err == nil {
		t.Error("status of an unknown process: no error")
	}
}

func TestFiles(t *testing.T) {
	_, c := newPair(t)
	p := filepath.Join(t.TempDir(), "a", "b", "kubeconfig")
	if err := c.WriteFile(ctx(t), p, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("written file: %v %v", st, err)
	}
	b, err := c.ReadFile(ctx(t), p)
	if err != nil || string(b) != "secret" {
		t.Errorf("read back %q, %v", b, err)
	}
	if _, err := c.ReadFile(ctx(t), p+".missing"); err == nil {
		t.Error("missing file: no error")
	}
}

// Echo queries and a long-lived connection against a real echo server on
// the loopback.
func TestQueriesAndConnections(t *testing.T) {
	tcpAddr, udpAddr, httpAddr := freeAddr(t, "tcp"), freeAddr(t, "udp"), freeAddr(t, "tcp")
	srv, err := echo.Listen(echo.ServerConfig{Name: "pod-a", TCP: tcpAddr, UDP: udpAddr, HTTP: httpAddr})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	defer stop()
	go srv.Serve(sctx)
	_, c := newPair(t)

	for proto, addr := range map[string]string{"tcp": tcpAddr, "udp": udpAddr, "http": httpAddr} {
		r, err := c.Query(ctx(t), agentapi.QueryArgs{Proto: proto, Addr: addr, Timeout: 2 * time.Second})
		if err != nil || r.Reply.Pod != "pod-a" || r.Reply.Proto != proto {
			t.Errorf("%s query: %+v, %v", proto, r, err)
		}
	}
	many, err := c.QueryMany(ctx(t), agentapi.QueryManyArgs{QueryArgs: agentapi.QueryArgs{Proto: "tcp", Addr: tcpAddr, Timeout: 2 * time.Second}, Count: 5})
	if err != nil || len(many.Replies) != 5 || many.Replies[4].Pod != "pod-a" || many.Errors[0] != "" {
		t.Errorf("QueryMany: %+v, %v", many, err)
	}
	if _, err := c.QueryMany(ctx(t), agentapi.QueryManyArgs{Count: 0}); err == nil {
		t.Error("QueryMany count 0: no error")
	}

	conn, err := c.ConnOpen(ctx(t), agentapi.ConnOpenArgs{Addr: tcpAddr, Timeout: 2 * time.Second})
	if err != nil || conn.Hello.Pod != "pod-a" || conn.Local == "" {
		t.Fatalf("ConnOpen: %+v, %v", conn, err)
	}
	for _, msg := range []string{"one", "two"} {
		r, err := c.ConnEcho(ctx(t), agentapi.ConnEchoArgs{ID: conn.ID, Data: msg})
		if err != nil || r.Data != msg {
			t.Errorf("echo %q: %+v, %v", msg, r, err)
		}
	}
	if _, err := c.ConnEcho(ctx(t), agentapi.ConnEchoArgs{ID: conn.ID, Data: "two\nlines"}); err == nil {
		t.Error("multi-line data: no error")
	}
	if err := c.ConnClose(ctx(t), conn.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ConnEcho(ctx(t), agentapi.ConnEchoArgs{ID: conn.ID, Data: "x"}); err == nil {
		t.Error("echo on a closed connection: no error")
	}

	h, err := c.HTTPGet(ctx(t), agentapi.HTTPGetArgs{URL: "http://" + httpAddr + "/"})
	if err != nil || h.Status != 200 || !strings.Contains(h.Body, `"pod":"pod-a"`) {
		t.Errorf("HTTPGet: %+v, %v", h, err)
	}
}

// freeAddr finds a free loopback port (echo.Listen does not report the
// ports it bound).
func freeAddr(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// A call whose context ends returns at once even if the agent is slow.
func TestClientHonoursContext(t *testing.T) {
	_, c := newPair(t)
	cctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Exec(cctx, agentapi.ExecArgs{Argv: []string{"sleep", "5"}, Timeout: 10 * time.Second})
	if err == nil || time.Since(start) > 3*time.Second {
		t.Errorf("err %v after %s", err, time.Since(start))
	}
}

func TestRelay(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 5)
		n, _ := c.Read(buf)
		_, _ = c.Write([]byte("re:" + string(buf[:n])))
	}()
	// relay uses the process's stdin/stdout, as qemu's guestfwd cmd: does.
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	oldIn, oldOut := os.Stdin, os.Stdout
	os.Stdin, os.Stdout = inR, outW
	defer func() { os.Stdin, os.Stdout = oldIn, oldOut }()
	done := make(chan int)
	go func() { done <- relay(l.Addr().String()) }()
	_, _ = inW.Write([]byte("hello"))
	inW.Close()
	if code := <-done; code != 0 {
		t.Fatalf("relay exit %d", code)
	}
	outW.Close()
	got := make([]byte, 64)
	n, _ := outR.Read(got)
	if string(got[:n]) != "re:hello" {
		t.Errorf("relayed %q", got[:n])
	}
	if code := relay("127.0.0.1:1"); code == 0 {
		t.Error("relay to a closed port: exit 0")
	}
}
