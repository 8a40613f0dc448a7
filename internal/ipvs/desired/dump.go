package desired

import (
	"fmt"
	"sort"
	"strings"
)

// Dump renders the state as readable text: virtual servers with their real
// servers, the link's addresses, the non-empty ip sets, the iptables batch.
// Golden tests compare it; operators read it.
func (s *State) Dump(link string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: %d service ports, %d virtual servers, %d real servers, %d link addresses, %d set entries",
		s.Family, s.Stats.ServicePorts, s.Stats.VirtualServers, s.Stats.RealServers, s.Stats.BindAddrs, s.Stats.SetEntries)
	if s.Stats.NoLocalInternal+s.Stats.NoLocalExternal > 0 {
		fmt.Fprintf(&b, ", no local endpoints: %d internal, %d external", s.Stats.NoLocalInternal, s.Stats.NoLocalExternal)
	}
	b.WriteString("\n\nvirtual servers:\n")
	for _, k := range s.SortedKeys() {
		vs := s.Services[k]
		where := ""
		if vs.Bind {
			where = ", on " + link
		}
		fmt.Fprintf(&b, "  %s  (%s %s%s)\n", vs.Service.String(), vs.Owner, vs.Kind, where)
		if len(vs.Dests) == 0 {
			b.WriteString("    (no real servers)\n")
		}
		for _, d := range vs.Dests {
			fmt.Fprintf(&b, "    -> %s\n", d)
		}
	}
	fmt.Fprintf(&b, "\nlink %s:\n", link)
	for _, a := range s.Bind {
		fmt.Fprintf(&b, "  %s\n", a)
	}
	b.WriteString("\nip sets:\n")
	names := make([]string, 0, len(s.Sets))
	var empty []string
	for n, set := range s.Sets {
		if len(set.Entries) == 0 {
			empty = append(empty, n)
			continue
		}
		names = append(names, n)
	}
	sort.Strings(names)
	sort.Strings(empty)
	for _, n := range names {
		set := s.Sets[n]
		fmt.Fprintf(&b, "  %s %s\n", n, set.Type)
		for _, e := range set.Sorted() {
			fmt.Fprintf(&b, "    %s\n", e)
		}
	}
	if len(empty) > 0 {
		fmt.Fprintf(&b, "  (empty: %s)\n", strings.Join(empty, " "))
	}
	if len(s.Conflicts) > 0 {
		b.WriteString("\nconflicts:\n")
		for _, c := range s.Conflicts {
			fmt.Fprintf(&b, "  %s\n", c)
		}
	}
	b.WriteString("\niptables:\n")
	b.Write(s.Rules)
	return b.String()
}
