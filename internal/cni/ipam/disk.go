package ipam

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Layout of a DiskStore directory (one per network):
//
//	lock                   flock(2)ed by whoever allocates or releases
//	198.18.1.2             one file per reserved address: "<containerID>\n<ifname>\n"
//	2001:db8:10:1::2
//	last_reserved.ipv4     the address most recently handed out, per family
//	last_reserved.ipv6
//
// An operator can see at a glance which container holds which address
// (`grep -l <id> *`), and a stuck address is freed by deleting its file.
const (
	lockFile       = "lock"
	lastPrefix     = "last_reserved."
	tmpPrefix      = ".tmp-"
	pollMin        = 2 * time.Millisecond
	pollMax        = 50 * time.Millisecond
	reservationFmt = "%s\n%s\n"
)

// DiskStore keeps reservations as files in one directory, guarded by an
// flock(2) on a lock file (the host-local IPAM design).
type DiskStore struct {
	dir  string
	lock *os.File
}

var _ Store = (*DiskStore)(nil)

// DiskStoreConfig configures OpenDiskStore.
type DiskStoreConfig struct {
	// Dir is the network's state directory; created if missing.
	Dir string
}

// OpenDiskStore opens (creating if needed) the store in cfg.Dir.
func OpenDiskStore(cfg DiskStoreConfig) (*DiskStore, error) {
	if cfg.Dir == "" {
		return nil, errors.New("ipam: empty data directory")
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating IPAM data directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(cfg.Dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening IPAM lock file: %w", err)
	}
	return &DiskStore{dir: cfg.Dir, lock: f}, nil
}

// Dir is the store's directory.
func (s *DiskStore) Dir() string { return s.dir }

// Lock polls a non-blocking flock until it succeeds or ctx is done; a
// blocking flock could not be abandoned when the runtime's deadline nears.
func (s *DiskStore) Lock(ctx context.Context) error {
	wait := pollMin
	for {
		err := unix.Flock(int(s.lock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("locking %s: %w", s.lock.Name(), err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w %s: %v", ErrLockTimeout, s.lock.Name(), ctx.Err())
		case <-t.C:
		}
		if wait *= 2; wait > pollMax {
			wait = pollMax
		}
	}
}

// Unlock releases the flock.
func (s *DiskStore) Unlock() error {
	return unix.Flock(int(s.lock.Fd()), unix.LOCK_UN)
}

// Close closes the lock file (which also drops a lock still held).
func (s *DiskStore) Close() error { return s.lock.Close() }

// addrFile maps an address to its file; addresses never contain '/'.
func (s *DiskStore) addrFile(a netip.Addr) string { return filepath.Join(s.dir, a.String()) }

// List reads every reservation file. Files whose names are not addresses
// (lock, last_reserved.*, temporaries) are skipped.
func (s *DiskStore) List() ([]Reservation, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var out []Reservation
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		a, err := netip.ParseAddr(e.Name())
		if err != nil || a.Zone() != "" {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // released between ReadDir and ReadFile by a lock-less reader
		}
		if err != nil {
			return nil, err
		}
		out = append(out, Reservation{Addr: a, Owner: parseOwner(data)})
	}
	return out, nil
}

func parseOwner(data []byte) Owner {
	lines := strings.SplitN(strings.TrimSpace(string(data)), "\n", 2)
	o := Owner{ContainerID: strings.TrimSpace(lines[0])}
	if len(lines) > 1 {
		o.IfName = strings.TrimSpace(lines[1])
	}
	return o
}

// Reserve writes the record to a temporary file and hard-links it into
// place: link(2) fails if the name exists, so a reservation appears
// complete or not at all, and two writers can never both win.
func (s *DiskStore) Reserve(r Reservation) (bool, error) {
	if !r.Addr.IsValid() || r.Addr.Zone() != "" {
		return false, fmt.Errorf("invalid address %v", r.Addr)
	}
	if strings.ContainsAny(r.Owner.ContainerID, "\n") || strings.ContainsAny(r.Owner.IfName, "\n") {
		return false, errors.New("container ID and interface name may not contain newlines")
	}
	tmp, err := os.CreateTemp(s.dir, tmpPrefix)
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := fmt.Fprintf(tmp, reservationFmt, r.Owner.ContainerID, r.Owner.IfName); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if err := os.Link(tmp.Name(), s.addrFile(r.Addr)); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// Release removes the address's file; a missing file is fine.
func (s *DiskStore) Release(a netip.Addr) error {
	err := os.Remove(s.addrFile(a))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

func lastFile(is6 bool) string {
	if is6 {
		return lastPrefix + "ipv6"
	}
	return lastPrefix + "ipv4"
}

// LastReserved reads last_reserved.ipv4/ipv6; a missing or garbled file
// means "none" (allocation then starts at the pool's first address).
func (s *DiskStore) LastReserved(is6 bool) (netip.Addr, error) {
	data, err := os.ReadFile(filepath.Join(s.dir, lastFile(is6)))
	if errors.Is(err, fs.ErrNotExist) {
		return netip.Addr{}, nil
	}
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(data)))
	if err != nil {
		return netip.Addr{}, nil
	}
	return a, nil
}

// SetLastReserved writes last_reserved.<family> via rename, so a reader
// never sees half a file.
func (s *DiskStore) SetLastReserved(a netip.Addr) error {
	tmp, err := os.CreateTemp(s.dir, tmpPrefix)
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(a.String() + "\n"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(s.dir, lastFile(a.Is6())))
}
