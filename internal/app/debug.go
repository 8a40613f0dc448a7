package app

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/kpr-proxy/kpr/internal/model"
)

// debugHandler serves kpr's debug views on the metrics address:
//
//	/debug/kpr/service/<namespace>/<name>  the rules kpr has in the kernel
//	                                       for that Service, per family
//	/debug/kpr/snapshot                    JSON: every Service port kpr
//	                                       programmed, with its endpoints
//	                                       (used by `proxy conntrack`)
func (a *App) debugHandler(w http.ResponseWriter, r *http.Request) {
	rest := strings.Trim(strings.TrimPrefix(r.URL.Path, "/debug/kpr/"), "/")
	parts := strings.Split(rest, "/")
	switch {
	case rest == "snapshot":
		a.serveSnapshot(w)
	case len(parts) == 3 && parts[0] == "service":
		a.serveServiceRules(w, r, parts[1], parts[2])
	default:
		http.Error(w, "usage: /debug/kpr/service/<namespace>/<name> or /debug/kpr/snapshot", http.StatusNotFound)
	}
}

func (a *App) serveServiceRules(w http.ResponseWriter, r *http.Request, ns, name string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	found := false
	for _, f := range a.families {
		out, ok, err := f.proxier.Programmed(r.Context(), ns, name)
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
		http.Error(w, fmt.Sprintf("Service %s/%s is not programmed by kpr on this node", ns, name), http.StatusNotFound)
	}
}

// SnapshotView is the JSON form of /debug/kpr/snapshot.
type SnapshotView struct {
	Node string `json:"node"`
	// NodeZone is the node's topology.kubernetes.io/zone (for hints).
	NodeZone string        `json:"nodeZone,omitempty"`
	Services []ServiceView `json:"services"`
}

// ServiceView is one Service port in one family.
type ServiceView struct {
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	Port        string   `json:"portName,omitempty"`
	Protocol    string   `json:"protocol"`
	Family      string   `json:"family"`
	ClusterIP   string   `json:"clusterIP"`
	ServicePort uint16   `json:"port"`
	NodePort    uint16   `json:"nodePort,omitempty"`
	ExternalIPs []string `json:"externalIPs,omitempty"`
	LBIPs       []string `json:"loadBalancerIPs,omitempty"`
	// Traffic policies decide which endpoints this node uses.
	InternalPolicyLocal bool           `json:"internalTrafficPolicyLocal,omitempty"`
	ExternalPolicyLocal bool           `json:"externalTrafficPolicyLocal,omitempty"`
	Endpoints           []EndpointView `json:"endpoints"`
}

// EndpointView is one endpoint of a Service port.
type EndpointView struct {
	IP          string   `json:"ip"`
	Port        uint16   `json:"port"`
	Ready       bool     `json:"ready"`
	Serving     bool     `json:"serving"`
	Terminating bool     `json:"terminating"`
	Node        string   `json:"node,omitempty"`
	Pod         string   `json:"pod,omitempty"`
	Local       bool     `json:"local"`
	Zone        string   `json:"zone,omitempty"`
	ZoneHints   []string `json:"zoneHints,omitempty"`
	NodeHints   []string `json:"nodeHints,omitempty"`
}

func (a *App) serveSnapshot(w http.ResponseWriter) {
	v := SnapshotView{Node: a.nodeName, Services: []ServiceView{}}
	for _, n := range a.watcher.Nodes() {
		if n != nil && n.Zone != "" {
			v.NodeZone = n.Zone
		}
	}
	for _, f := range a.families {
		if s := f.proxier.Applied(); s != nil {
			v.Services = append(v.Services, viewOf(s)...)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func viewOf(s *model.Snapshot) []ServiceView {
	var out []ServiceView
	for _, name := range s.SortedNames() {
		sp := s.Services[name]
		sv := ServiceView{
			Namespace: name.Namespace, Name: name.Name, Port: name.Port, Protocol: string(sp.Protocol),
			Family: s.Family.String(), ClusterIP: sp.ClusterIP.String(), ServicePort: sp.Port, NodePort: sp.NodePort,
			InternalPolicyLocal: sp.InternalPolicyLocal, ExternalPolicyLocal: sp.ExternalPolicyLocal,
			Endpoints: []EndpointView{},
		}
		for _, ip := range sp.ExternalIPs {
			sv.ExternalIPs = append(sv.ExternalIPs, ip.String())
		}
		for _, ip := range sp.LoadBalancerVIPs {
			sv.LBIPs = append(sv.LBIPs, ip.String())
		}
		for _, ep := range s.Endpoints[name] {
			sv.Endpoints = append(sv.Endpoints, EndpointView{
				IP: ep.IP.String(), Port: ep.Port, Ready: ep.Ready, Serving: ep.Serving, Terminating: ep.Terminating,
				Node: ep.NodeName, Pod: ep.PodName, Local: ep.IsLocal,
				Zone: ep.Zone, ZoneHints: ep.ZoneHints, NodeHints: ep.NodeHints,
			})
		}
		out = append(out, sv)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Family < out[j].Family })
	return out
}
