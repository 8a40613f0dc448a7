package ipset

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/kpr-proxy/kpr/internal/model"
)

// Parse reads `ipset save` output and returns the sets for which keep
// returns true (nil keeps all), keyed by name, entries canonicalised. Sets of
// types kpr does not use are returned without entries.
func Parse(data []byte, keep func(name string) bool) (map[string]*Set, error) {
	out := map[string]*Set{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch f[0] {
		case "create":
			if len(f) < 3 {
				return nil, fmt.Errorf("ipset save line %d: short create line", lineNo)
			}
			if keep != nil && !keep(f[1]) {
				continue
			}
			s, err := parseCreate(f[1:])
			if err != nil {
				return nil, fmt.Errorf("ipset save line %d: %w", lineNo, err)
			}
			out[s.Name] = s
		case "add":
			if len(f) < 3 {
				return nil, fmt.Errorf("ipset save line %d: short add line", lineNo)
			}
			s, ok := out[f[1]]
			if !ok {
				continue // a set we were told to skip
			}
			if !supported(s.Type) {
				continue
			}
			e, err := ParseEntry(s.Type, s.Family, f[2])
			if err != nil {
				return nil, fmt.Errorf("ipset save line %d: set %s: %w", lineNo, s.Name, err)
			}
			s.Entries[e] = struct{}{}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

func supported(t Type) bool {
	switch t {
	case HashIP, HashIPPort, HashIPPortIP, HashIPPortNet, BitmapPort:
		return true
	}
	return false
}

// parseCreate parses "NAME TYPE [options...]".
func parseCreate(f []string) (*Set, error) {
	s := &Set{Name: f[0], Type: Type(f[1]), Entries: map[string]struct{}{}}
	if s.Type != BitmapPort {
		s.Family = model.IPv4
	}
	for i := 2; i < len(f); i++ {
		switch f[i] {
		case "family":
			if i+1 < len(f) {
				i++
				switch f[i] {
				case "inet":
					s.Family = model.IPv4
				case "inet6":
					s.Family = model.IPv6
				default:
					return nil, fmt.Errorf("set %s: unknown family %q", s.Name, f[i])
				}
			}
		case "maxelem":
			if i+1 < len(f) {
				i++
				n, err := strconv.Atoi(f[i])
				if err != nil {
					return nil, fmt.Errorf("set %s: bad maxelem %q", s.Name, f[i])
				}
				s.MaxElem = n
			}
		}
	}
	return s, nil
}

// Batch accumulates an `ipset restore` input.
type Batch struct {
	b     bytes.Buffer
	lines int
}

// Create writes the create line of s (with -exist it is a no-op for an
// existing compatible set).
func (b *Batch) Create(s *Set) {
	fmt.Fprintf(&b.b, "create %s %s\n", s.Name, s.Definition())
	b.lines++
}

// Add writes one add line.
func (b *Batch) Add(set, entry string) {
	b.b.WriteString("add " + set + " " + restoreForm(entry) + "\n")
	b.lines++
}

// Del writes one del line.
func (b *Batch) Del(set, entry string) {
	b.b.WriteString("del " + set + " " + restoreForm(entry) + "\n")
	b.lines++
}

// Flush writes a flush line.
func (b *Batch) Flush(set string) {
	b.b.WriteString("flush " + set + "\n")
	b.lines++
}

// Destroy writes a destroy line.
func (b *Batch) Destroy(set string) {
	b.b.WriteString("destroy " + set + "\n")
	b.lines++
}

// Lines is the number of commands written.
func (b *Batch) Lines() int { return b.lines }

// Bytes is the batch.
func (b *Batch) Bytes() []byte { return b.b.Bytes() }

// Save renders sets in `ipset save` form (protocol names, sorted entries),
// for dumps and for the fake.
func Save(sets []*Set) []byte {
	var b bytes.Buffer
	for _, s := range sets {
		fmt.Fprintf(&b, "create %s %s\n", s.Name, s.Definition())
		for _, e := range s.Sorted() {
			fmt.Fprintf(&b, "add %s %s\n", s.Name, e)
		}
	}
	return b.Bytes()
}

// ContextLines returns the lines around line (1-based) of a batch, numbered,
// for logging a failed restore.
func ContextLines(data []byte, line, around int) []string {
	lines := strings.Split(string(data), "\n")
	var out []string
	for i := max(1, line-around); i <= min(len(lines), line+around); i++ {
		out = append(out, fmt.Sprintf("%d: %s", i, lines[i-1]))
	}
	return out
}
