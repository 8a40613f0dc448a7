package testing

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
)

func TestFakeListener(t *testing.T) {
	f := NewFakeListener()
	ctx := context.Background()

	wild, err := f.Listen(ctx, "tcp4", "0.0.0.0:30001")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Listen(ctx, "tcp4", "0.0.0.0:30001"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second listen: %v", err)
	}
	exact, err := f.Listen(ctx, "tcp4", "192.0.2.10:30002")
	if err != nil {
		t.Fatal(err)
	}
	f.FailAddr("192.0.2.11:30003", syscall.EACCES)
	if _, err := f.Listen(ctx, "tcp4", "192.0.2.11:30003"); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("failing listen: %v", err)
	}

	// Dial through the wildcard and exchange bytes.
	go func() {
		c, err := wild.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte("hi"))
		c.Close()
	}()
	c, err := f.Dial(ctx, "tcp", "192.0.2.99:30001")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	if string(b) != "hi" {
		t.Fatalf("read %q", b)
	}
	if _, err := f.Dial(ctx, "tcp", "192.0.2.99:30002"); !errors.Is(err, ErrConnRefused) {
		t.Fatalf("dial to other IP of exact listener: %v", err)
	}
	if _, err := f.Dial(ctx, "tcp", "[2001:db8:1::1]:30001"); !errors.Is(err, ErrConnRefused) {
		t.Fatalf("IPv6 dial matched an IPv4 wildcard: %v", err)
	}

	exact.Close()
	if _, err := exact.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("accept after close: %v", err)
	}
	if got := f.Open(); len(got) != 1 || got[0] != "0.0.0.0:30001" {
		t.Fatalf("open %v", got)
	}
	if err := f.WaitOpen(ctx, "0.0.0.0:30001"); err != nil {
		t.Fatal(err)
	}
	if len(f.Calls()) != 4 {
		t.Fatalf("calls %v", f.Calls())
	}
}
