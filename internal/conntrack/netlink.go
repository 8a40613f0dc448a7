package conntrack

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/mdlayher/netlink"
	ctlib "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/kpr-proxy/kpr/internal/model"
)

// NetlinkConfig configures NewNetlink.
type NetlinkConfig struct {
	// NetNS is an open file descriptor of the network namespace to work
	// in (it is duplicated; the caller keeps ownership). 0 means the
	// calling thread's namespace: netlink sockets stay bound to the
	// namespace they were created in, so either call NewNetlink inside
	// the namespace (e.g. within netns.NS.Do) or pass its fd.
	NetNS int
	// EventReadBuffer is the receive buffer of Watch's socket in bytes
	// (default 4 MiB; the kernel caps it at net.core.rmem_max). A busy
	// node produces events faster than a terminal prints them.
	EventReadBuffer int
}

// Netlink is the real Interface and Watcher over ctnetlink.
type Netlink struct {
	cfg  NetlinkConfig
	conn *netlink.Conn
	// nsFD is our own handle on the namespace, so that Watch opens its
	// socket in the same namespace whatever thread calls it.
	nsFD int
	// noKernelFilter is set once the kernel rejected a CTA_FILTER dump
	// (pre-5.8); later dumps then filter by protocol in Go only.
	noKernelFilter atomic.Bool
}

var (
	_ Interface = (*Netlink)(nil)
	_ Watcher   = (*Netlink)(nil)
)

// NewNetlink opens a ctnetlink socket (see NetlinkConfig.NetNS for which
// namespace it talks to). Close it when done.
func NewNetlink(cfg NetlinkConfig) (*Netlink, error) {
	if cfg.EventReadBuffer <= 0 {
		cfg.EventReadBuffer = 4 << 20
	}
	var nsFD int
	var err error
	if cfg.NetNS != 0 {
		nsFD, err = unix.FcntlInt(uintptr(cfg.NetNS), unix.F_DUPFD_CLOEXEC, 0)
	} else {
		nsFD, err = currentNetNS()
	}
	if err != nil {
		return nil, fmt.Errorf("conntrack: getting network namespace handle: %w", err)
	}
	// NetNS 0 makes the library use the calling thread's namespace without
	// needing setns; an explicit fd is entered by the library.
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: cfg.NetNS})
	if err != nil {
		unix.Close(nsFD)
		return nil, fmt.Errorf("conntrack: opening netlink socket: %w", err)
	}
	return &Netlink{cfg: cfg, conn: conn, nsFD: nsFD}, nil
}

func currentNetNS() (int, error) {
	// The thread matters, not the process: lock so the path names the
	// namespace of the thread we run on (nested locks are counted, so
	// this is harmless inside netns.Do).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
}

// Close releases the socket and the namespace handle.
func (n *Netlink) Close() error {
	err := n.conn.Close()
	if n.nsFD > 0 {
		if cerr := unix.Close(n.nsFD); err == nil {
			err = cerr
		}
		n.nsFD = -1
	}
	return err
}

// List implements Interface: one dump, narrowed by the kernel to the family
// and (if filter.Protocol is set) the protocol; the rest of filter is
// applied here.
func (n *Netlink) List(family model.Family, filter Filter) ([]Flow, error) {
	if family != model.IPv4 && family != model.IPv6 {
		return nil, fmt.Errorf("invalid IP family %v", family)
	}
	if err := filter.Validate(family); err != nil {
		return nil, err
	}
	msgs, err := n.dump(family, filter.Protocol)
	if err != nil {
		return nil, err
	}
	out := make([]Flow, 0, len(msgs))
	for _, m := range msgs {
		_, fl, err := decodeMessage(m)
		if err != nil {
			return nil, fmt.Errorf("decoding conntrack entry: %w", err)
		}
		if fl.Family == family && filter.Match(&fl) {
			out = append(out, fl)
		}
	}
	return out, nil
}

func (n *Netlink) dump(family model.Family, proto uint8) ([]netlink.Message, error) {
	if n.noKernelFilter.Load() {
		proto = 0
	}
	req, err := dumpRequest(family, proto)
	if err != nil {
		return nil, err
	}
	msgs, err := n.conn.Execute(req)
	if err != nil && proto != 0 && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
		// A kernel without CTA_FILTER support for dumps: fall back to a
		// family dump, filtered in Go from now on.
		n.noKernelFilter.Store(true)
		return n.dump(family, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("dumping conntrack table: %w", err)
	}
	return msgs, nil
}

// maxDeleteErrors bounds how many per-flow errors Delete reports.
const maxDeleteErrors = 5

// Delete implements Interface. Each flow costs one request/ack round trip;
// a vanished flow (ENOENT: expired, deleted by someone else, or re-created
// with another id) is not an error.
func (n *Netlink) Delete(flows []Flow) (int, error) {
	deleted, failed := 0, 0
	var errs []error
	for i := range flows {
		req, err := deleteRequest(&flows[i])
		if err == nil {
			_, err = n.conn.Execute(req)
		}
		switch {
		case err == nil:
			deleted++
		case errors.Is(err, unix.ENOENT):
		default:
			failed++
			if len(errs) < maxDeleteErrors {
				errs = append(errs, fmt.Errorf("deleting %s: %w", flows[i].String(), err))
			}
		}
	}
	if failed > 0 {
		if failed > len(errs) {
			errs = append(errs, fmt.Errorf("and %d more failures", failed-len(errs)))
		}
		return deleted, errors.Join(errs...)
	}
	return deleted, nil
}

// Watch implements Watcher on a socket of its own (a socket that joined
// multicast groups can no longer be used for requests).
func (n *Netlink) Watch(ctx context.Context, family model.Family, types []EventType, out chan<- Event) error {
	c, err := ctlib.Dial(&netlink.Config{NetNS: n.nsFD})
	if err != nil {
		return fmt.Errorf("conntrack: opening event socket: %w", err)
	}
	// Best effort: without privileges the kernel caps the buffer.
	_ = c.SetReadBuffer(n.cfg.EventReadBuffer)

	// Join only the groups asked for: the kernel then does not even
	// build the other messages for us.
	var groups []netfilter.NetlinkGroup
	for _, g := range []struct {
		t EventType
		g netfilter.NetlinkGroup
	}{{EventNew, netfilter.GroupCTNew}, {EventUpdate, netfilter.GroupCTUpdate}, {EventDestroy, netfilter.GroupCTDestroy}} {
		if wantEvent(types, g.t) {
			groups = append(groups, g.g)
		}
	}
	if len(groups) == 0 {
		c.Close()
		return fmt.Errorf("no valid event types in %v", types)
	}
	evCh := make(chan ctlib.Event, 256)
	errCh, err := c.Listen(evCh, 1, groups)
	if err != nil {
		c.Close()
		return fmt.Errorf("conntrack: joining event groups: %w", err)
	}
	defer func() {
		// The library's worker blocks sending on evCh/errCh and Close
		// waits for it, so keep draining until Close has returned.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-evCh:
				case <-errCh:
				case <-stop:
					return
				}
			}
		}()
		c.Close()
		close(stop)
		wg.Wait()
	}()

	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errCh:
			return fmt.Errorf("conntrack event stream: %w", err)
		case lev := <-evCh:
			if lev.Flow == nil {
				continue
			}
			ev := Event{Flow: fromLib(lev.Flow)}
			switch lev.Type {
			case ctlib.EventNew:
				ev.Type = EventNew
			case ctlib.EventUpdate:
				ev.Type = EventUpdate
			case ctlib.EventDestroy:
				ev.Type = EventDestroy
			default:
				continue
			}
			if !WantEvent(family, types, &ev) {
				continue
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return nil
			}
		}
	}
}
