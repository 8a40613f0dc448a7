package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"github.com/kpr-proxy/kpr/e2e/echo"
	"github.com/kpr-proxy/kpr/e2e/framework"
)

// Probing the data path. Every probe is a new TCP connection (a new source
// port, so a new conntrack entry and a fresh NAT decision by the rules in the
// kernel at that moment), made with blocking syscalls on a thread switched
// into the client namespace: no goroutines or poller in the timed part.

// errInterrupted: a signal (Go's preemption) cut a blocking connect short;
// the sample is dropped and retried.
var errInterrupted = errors.New("connect interrupted")

func sockaddr(a netip.AddrPort) *syscall.SockaddrInet4 {
	return &syscall.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()}
}

// closeRST closes with an RST (SO_LINGER 0): no TIME_WAIT, so thousands of
// connects do not pile up sockets, and the server sees the end at once.
func closeRST(fd int) {
	_ = syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0})
	_ = syscall.Close(fd)
}

// connectFD opens a socket and connects it (blocking, bounded by timeout).
// It returns the socket (caller closes) and how long connect took.
func connectFD(sa *syscall.SockaddrInet4, timeout time.Duration) (int, time.Duration, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("socket: %w", err)
	}
	tv := syscall.NsecToTimeval(timeout.Nanoseconds())
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv); err != nil {
		closeRST(fd)
		return -1, 0, fmt.Errorf("SO_SNDTIMEO: %w", err)
	}
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		closeRST(fd)
		return -1, 0, fmt.Errorf("SO_RCVTIMEO: %w", err)
	}
	start := time.Now()
	err = syscall.Connect(fd, sa)
	d := time.Since(start)
	switch {
	case err == nil:
		return fd, d, nil
	case errors.Is(err, syscall.EINTR):
		closeRST(fd)
		return -1, d, errInterrupted
	case errors.Is(err, syscall.EINPROGRESS), errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.ETIMEDOUT):
		closeRST(fd)
		return -1, d, fmt.Errorf("connect to %d.%d.%d.%d:%d: no answer in %s", sa.Addr[0], sa.Addr[1], sa.Addr[2], sa.Addr[3], sa.Port, timeout)
	default:
		closeRST(fd)
		return -1, d, fmt.Errorf("connect: %w", err)
	}
}

// whoAnswers connects and reads the echo server's greeting line; it returns
// the answering pod's name.
func whoAnswers(sa *syscall.SockaddrInet4, timeout time.Duration) (string, error) {
	fd, _, err := connectFD(sa, timeout)
	if err != nil {
		return "", err
	}
	defer closeRST(fd)
	var buf [512]byte
	got := 0
	for got < len(buf) {
		n, err := syscall.Read(fd, buf[got:])
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("reading the echo greeting: %w", err)
		}
		if n == 0 {
			return "", fmt.Errorf("connection closed before the echo greeting")
		}
		got += n
		if i := bytes.IndexByte(buf[:got], '\n'); i >= 0 {
			var r echo.Reply
			if err := json.Unmarshal(buf[:i], &r); err != nil {
				return "", fmt.Errorf("bad echo greeting %q: %w", buf[:i], err)
			}
			return r.Pod, nil
		}
	}
	return "", fmt.Errorf("echo greeting longer than %d bytes", len(buf))
}

// ProbeConfig says how often and how patiently to probe.
type ProbeConfig struct {
	// Interval is the pause between probes; AttemptTimeout bounds each
	// connect (a SYN to a ClusterIP without rules is dropped by the sink, so
	// it never fails fast).
	Interval, AttemptTimeout time.Duration
}

// DefaultProbe: ~150 probes a second when connects fail fast, 5 ms
// resolution; little CPU beside a proxy working on 2 cores.
var DefaultProbe = ProbeConfig{Interval: 5 * time.Millisecond, AttemptTimeout: 20 * time.Millisecond}

// WaitForAnswer probes addr from inside ns until the pod named want answers
// (any pod when want is ""), ctx ends, or stop is closed. It returns the time
// the first such answer was seen and how many probes it took.
func WaitForAnswer(ctx context.Context, ns *framework.NetNS, addr netip.AddrPort, want string, pc ProbeConfig, stop <-chan struct{}) (time.Time, int, error) {
	sa := sockaddr(addr)
	var at time.Time
	probes := 0
	var last error
	err := ns.Do(func() error {
		for {
			probes++
			pod, err := whoAnswers(sa, pc.AttemptTimeout)
			if err == nil && (want == "" || pod == want) {
				at = time.Now()
				return nil
			}
			if err == nil {
				last = fmt.Errorf("answered by %s, want %s", pod, want)
			} else {
				last = err
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w (after %d probes; last: %v)", ctx.Err(), probes, last)
			case <-stop:
				return fmt.Errorf("stopped (after %d probes; last: %v)", probes, last)
			case <-time.After(pc.Interval):
			}
		}
	})
	return at, probes, err
}

// ConnectLatencies makes n connects from inside ns, back to back, taking
// addrs in turn, and returns each successful connect's duration (SYN sent to
// SYN-ACK received, as the kernel's blocking connect reports it) and the
// number that failed. Interrupted connects are retried and not counted.
func ConnectLatencies(ns *framework.NetNS, addrs []netip.AddrPort, n int, timeout time.Duration) ([]time.Duration, int, error) {
	if len(addrs) == 0 {
		return nil, 0, fmt.Errorf("no addresses to connect to")
	}
	sas := make([]*syscall.SockaddrInet4, len(addrs))
	for i, a := range addrs {
		sas[i] = sockaddr(a)
	}
	out := make([]time.Duration, 0, n)
	failed := 0
	var firstErr error
	err := ns.Do(func() error {
		for i := 0; len(out)+failed < n; i++ {
			fd, d, err := connectFD(sas[i%len(sas)], timeout)
			if errors.Is(err, errInterrupted) {
				continue
			}
			if err != nil {
				failed++
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			closeRST(fd)
			out = append(out, d)
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	if failed > n/10 {
		return out, failed, fmt.Errorf("%d of %d connects to %v failed (first: %v)", failed, n, addrs, firstErr)
	}
	return out, failed, nil
}
