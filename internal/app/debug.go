package app

import (
	"fmt"
	"net/http"
	"strings"
)

// debugHandler serves /debug/kpr/service/<namespace>/<name>: the rules kpr
// programmed for that Service, read back from the kernel, per family. It
// answers "what did the proxy do with my Service?" without iptables-save
// and grep on the node.
func (a *App) debugHandler(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.Path, "/debug/kpr/")
	parts := strings.Split(strings.Trim(rest, "/"), "/")
	if len(parts) != 3 || parts[0] != "service" {
		http.Error(w, "usage: /debug/kpr/service/<namespace>/<name>", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	found := false
	for _, f := range a.families {
		out, ok, err := f.proxier.Programmed(r.Context(), parts[1], parts[2])
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if !ok {
			continue
		}
		found = true
		fmt.Fprintf(w, "# %s\n%s", f.fam, out)
	}
	if !found {
		http.Error(w, fmt.Sprintf("Service %s/%s is not programmed by kpr on this node", parts[1], parts[2]), http.StatusNotFound)
	}
}
