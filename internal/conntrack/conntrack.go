// Package conntrack removes stale conntrack entries after each sync and
// offers the kernel-boundary pieces the `proxy conntrack` debug CLI needs
// (list, delete by filter, watch events), plus the conntrack sysctls
// kube-proxy sets at start-up.
//
// Why stale entries matter: NAT decisions are taken for the first packet of
// a flow only; later packets follow the conntrack entry. For UDP (DNS above
// all) a client that keeps its source port keeps being sent to an endpoint
// that is gone, or to nowhere if the first packet was sent before the
// Service had endpoints, until the entry times out (kubernetes issues
// 19029, 48370, 125467). A TCP client whose connection breaks opens a new
// one (new source port, new NAT decision), so TCP entries are never touched.
//
// Layout: flow.go is the library-neutral Flow/Filter model; stale.go is the
// pure selection logic; cleanup.go drives it against an Interface;
// netlink.go is the real Interface over ctnetlink; sysctl.go the sysctls.
package conntrack

import (
	"context"
	"errors"
	"fmt"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Interface is the kernel boundary the cleaner (and the CLI) uses.
//
// Why list-then-delete and not a kernel-side filtered flush: the kernel's
// filtered flush (CTA_FILTER on IPCTNL_MSG_CT_DELETE) matches one tuple
// pattern per request, and "reply source is NOT one of these endpoints"
// cannot be expressed at all. So we dump once per sync — narrowed in the
// kernel to the family and the L4 protocol, which leaves out the (usually
// dominant) TCP entries — decide in Go, and delete exactly the entries
// chosen, each by tuple and id.
type Interface interface {
	// List returns the family's flows that filter selects. The real
	// implementation asks the kernel for the protocol only and applies the
	// rest of the filter in Go.
	List(family model.Family, filter Filter) ([]Flow, error)
	// Delete removes the given flows, each addressed by its original
	// tuple and zone and, when Flow.ID is set, only if the entry still has
	// that id (so an entry that expired and was re-created, with a fresh
	// NAT decision, since the dump is left alone). Flows that are already
	// gone are not errors. It returns how many entries it removed; on
	// error it still tries every flow.
	Delete(flows []Flow) (int, error)
}

// EventType is a kind of conntrack event.
type EventType uint8

const (
	EventNew EventType = iota + 1
	EventUpdate
	EventDestroy
)

func (t EventType) String() string {
	switch t {
	case EventNew:
		return "NEW"
	case EventUpdate:
		return "UPDATE"
	case EventDestroy:
		return "DESTROY"
	}
	return fmt.Sprintf("EventType(%d)", uint8(t))
}

// Event is one conntrack event.
type Event struct {
	Type EventType
	Flow Flow
}

// Watcher streams conntrack events (for `proxy conntrack watch`).
type Watcher interface {
	// Watch sends events of the given types (all three if none) for the
	// family (both families if family is 0) to out until ctx is done, then
	// returns nil; it returns an error if the event stream breaks (e.g.
	// the kernel dropped events because out was not drained fast enough).
	// It never closes out.
	Watch(ctx context.Context, family model.Family, types []EventType, out chan<- Event) error
}

// DeleteMatching deletes every flow of the family that filter selects: one
// dump, then one delete per matching flow. It is the "flush by filter" of
// the CLI; an empty filter is refused so that a missing flag cannot wipe
// the whole table.
func DeleteMatching(ct Interface, family model.Family, filter Filter) (int, error) {
	if filter == (Filter{}) {
		return 0, errors.New("refusing to delete with an empty filter (it would flush the whole table)")
	}
	if err := filter.Validate(family); err != nil {
		return 0, err
	}
	flows, err := ct.List(family, filter)
	if err != nil {
		return 0, fmt.Errorf("listing %s conntrack entries: %w", family, err)
	}
	return ct.Delete(flows)
}

func wantEvent(types []EventType, t EventType) bool {
	if len(types) == 0 {
		return true
	}
	for _, x := range types {
		if x == t {
			return true
		}
	}
	return false
}

// WantEvent reports whether an event of type t on family fam passes the
// Watch arguments (shared by the real watcher and the fake).
func WantEvent(family model.Family, types []EventType, ev *Event) bool {
	return (family == 0 || ev.Flow.Family == family) && wantEvent(types, ev.Type)
}
