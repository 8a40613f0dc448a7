// Package testing has an in-memory fake of health.Listener: listeners that
// accept connections made with Dial, so HTTP servers can be tested without
// sockets, plus switches to make binding fail.
package testing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"syscall"

	"github.com/kpr-proxy/kpr/internal/health"
)

var _ health.Listener = (*FakeListener)(nil)

// FakeListener implements health.Listener in memory. The zero value is not
// usable; call NewFakeListener.
type FakeListener struct {
	mu    sync.Mutex
	open  map[string]*fakeNetListener // by "host:port"
	fail  map[string]error            // by "host:port"
	calls []string                    // "network addr" of every Listen call
	// changed is closed (and replaced) whenever a listener opens or closes.
	changed chan struct{}
}

// NewFakeListener returns a fake with nothing open.
func NewFakeListener() *FakeListener {
	return &FakeListener{open: map[string]*fakeNetListener{}, fail: map[string]error{}, changed: make(chan struct{})}
}

// Listen implements health.Listener. It fails with EADDRINUSE when addr is
// already open, or with the error set by FailAddr.
func (f *FakeListener) Listen(_ context.Context, network, addr string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("fake listen %s %s: %w", network, addr, err)
	}
	key := ap.String()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, network+" "+key)
	if err := f.fail[key]; err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	if _, busy := f.open[key]; busy {
		return nil, &net.OpError{Op: "listen", Net: network, Err: syscall.EADDRINUSE}
	}
	l := &fakeNetListener{
		owner: f,
		key:   key,
		addr:  net.TCPAddrFromAddrPort(ap),
		conns: make(chan net.Conn),
		done:  make(chan struct{}),
	}
	f.open[key] = l
	f.notifyLocked()
	return l, nil
}

func (f *FakeListener) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// WaitOpen blocks until addr ("host:port") is listening or ctx is done, so
// tests can wait for a server goroutine without sleeping.
func (f *FakeListener) WaitOpen(ctx context.Context, addr string) error {
	for {
		f.mu.Lock()
		_, ok := f.open[addr]
		ch := f.changed
		f.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// FailAddr makes Listen on addr ("host:port") fail with err; a nil err
// clears the failure.
func (f *FakeListener) FailAddr(addr string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, addr)
	} else {
		f.fail[addr] = err
	}
}

// Open returns the addresses currently listening, sorted.
func (f *FakeListener) Open() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.open))
	for k := range f.open {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Calls returns "network host:port" for every Listen call so far.
func (f *FakeListener) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// ErrConnRefused is returned by Dial when nothing listens on the address.
var ErrConnRefused = errors.New("fake: connection refused")

// Dial connects to a fake listener: the exact address, else a wildcard
// (0.0.0.0 / ::) listener on the same port and family. It has the signature
// of http.Transport.DialContext.
func (f *FakeListener) Dial(ctx context.Context, _, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	l := f.open[ap.String()]
	if l == nil {
		wild := netip.IPv4Unspecified()
		if ap.Addr().Is6() {
			wild = netip.IPv6Unspecified()
		}
		l = f.open[netip.AddrPortFrom(wild, ap.Port()).String()]
	}
	f.mu.Unlock()
	if l == nil {
		return nil, ErrConnRefused
	}
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, ErrConnRefused
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type fakeNetListener struct {
	owner *FakeListener
	key   string
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *fakeNetListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *fakeNetListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.owner.mu.Lock()
		if l.owner.open[l.key] == l {
			delete(l.owner.open, l.key)
			l.owner.notifyLocked()
		}
		l.owner.mu.Unlock()
	})
	return nil
}

func (l *fakeNetListener) Addr() net.Addr { return l.addr }
