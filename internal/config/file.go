package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// The only configuration file type kube-proxy v1.37 reads.
const (
	fileAPIVersion = "kubeproxy.config.k8s.io/v1alpha1"
	fileKind       = "KubeProxyConfiguration"
)

// kube-proxy's defaults (pkg/proxy/apis/config/v1alpha1/defaults.go and
// pkg/cluster/ports).
const (
	defaultHealthzPort        = 10256
	defaultMetricsPort        = 10249
	defaultOOMScoreAdj        = -999
	defaultSyncPeriod         = 30 * time.Second
	defaultMinSyncPeriod      = 1 * time.Second
	defaultMasqueradeBit      = 14
	defaultConntrackMaxPerCor = 32 * 1024
	defaultConntrackMin       = 128 * 1024
	defaultTCPEstablished     = 24 * time.Hour
	defaultTCPCloseWait       = 1 * time.Hour
	defaultConfigSyncPeriod   = 15 * time.Minute
	defaultContentType        = "application/vnd.kubernetes.protobuf"
	defaultQPS                = 5.0
	defaultBurst              = 10
	defaultLogFlushFrequency  = 5 * time.Second
	defaultIPVSScheduler      = "rr"
)

// removedFieldNote explains fields that older kube-proxy releases had in
// v1alpha1 (and that kubeadm of those releases wrote into every ConfigMap)
// but v1.37 no longer has. kube-proxy v1.37 still loads such a file: its
// strict decoding fails and it falls back to lenient decoding, which drops
// them. kpr accepts exactly these with a warning; any other unknown field
// is an error.
func removedFieldNote(path string) (string, bool) {
	switch path {
	case "udpIdleTimeout":
		return "it configured the userspace proxy mode, which was removed", true
	case "resourceContainer":
		return "kube-proxy stopped moving itself into a cgroup", true
	case "conntrack.max":
		return "replaced by conntrack.maxPerCore and conntrack.min", true
	}
	return "", false
}

// decodeFile decodes a KubeProxyConfiguration strictly: YAML or JSON,
// apiVersion and kind checked, field names case-sensitive, duplicate and
// unknown fields rejected with their full path. The result is not defaulted.
// source names the file in errors.
func decodeFile(data []byte, source string) (*v1alpha1.KubeProxyConfiguration, []Warning, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil, fmt.Errorf("the file is empty; expected apiVersion: %s, kind: %s", fileAPIVersion, fileKind)
	}
	// YAMLToJSONStrict also rejects duplicate keys, which plain YAML
	// decoding would silently resolve to the last one. JSON is YAML, so a
	// JSON file takes the same path.
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, nil, fmt.Errorf("not valid YAML or JSON: %w", err)
	}

	var tm metav1.TypeMeta
	if err := kjson.UnmarshalCaseSensitivePreserveInts(js, &tm); err != nil {
		return nil, nil, fmt.Errorf("not a KubeProxyConfiguration object: %w", err)
	}
	switch {
	case tm.APIVersion == "" && tm.Kind == "":
		return nil, nil, fmt.Errorf("apiVersion and kind are missing; expected apiVersion: %s, kind: %s", fileAPIVersion, fileKind)
	case tm.Kind != fileKind:
		return nil, nil, fmt.Errorf("kind %q is not %s", tm.Kind, fileKind)
	case tm.APIVersion != fileAPIVersion:
		return nil, nil, fmt.Errorf("apiVersion %q is not supported; kube-proxy v1.37 (and kpr) read %s", tm.APIVersion, fileAPIVersion)
	}

	kpc := &v1alpha1.KubeProxyConfiguration{}
	strictErrs, err := kjson.UnmarshalStrict(js, kpc, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		// Type errors name the field ("... Go struct field
		// KubeProxyIPTablesConfiguration.iptables.masqueradeBit of type
		// int32"), but errors from a type's own decoder (a bad duration)
		// do not: find the field so the operator need not guess.
		if path := locateDecodeError(js, reflect.TypeOf(kpc).Elem(), ""); path != "" {
			return nil, nil, &ValidationError{Source: source, Errs: []*FieldError{{Field: path, Detail: err.Error()}}}
		}
		return nil, nil, fmt.Errorf("decoding: %w", err)
	}
	var warns []Warning
	var errs []*FieldError
	for _, se := range strictErrs {
		var fe kjson.FieldError
		if !errors.As(se, &fe) {
			errs = append(errs, &FieldError{Field: "(file)", Detail: se.Error()})
			continue
		}
		path := fe.FieldPath()
		switch {
		case strings.HasPrefix(se.Error(), "duplicate field"):
			errs = append(errs, &FieldError{Field: path, Detail: "duplicate field"})
		default:
			if note, ok := removedFieldNote(path); ok {
				warns = append(warns, Warning{Field: path, Message: "ignored: removed from KubeProxyConfiguration (" + note + "); kube-proxy v1.37 ignores it too"})
				continue
			}
			errs = append(errs, &FieldError{Field: path, Detail: "unknown field: " + fileAPIVersion + " " + fileKind + " has no such field"})
		}
	}
	if len(errs) > 0 {
		return nil, nil, &ValidationError{Source: source, Errs: errs}
	}
	return kpc, warns, nil
}

// setDefaults fills the fields a file left out, as kube-proxy's
// SetDefaults_KubeProxyConfiguration does, except logging.format: kpr's
// default format (json) differs from kube-proxy's (text), so an unset
// format stays "" to tell it apart from an explicit "text".
func setDefaults(c *v1alpha1.KubeProxyConfiguration) {
	if c.BindAddress == "" {
		c.BindAddress = "0.0.0.0"
	}
	healthzHost, metricsHost := "0.0.0.0", "127.0.0.1"
	if ip, ok := parseIP(c.BindAddress); ok && !ip.Is4() {
		healthzHost, metricsHost = "[::]", "[::1]"
	}
	if c.HealthzBindAddress == "" {
		c.HealthzBindAddress = fmt.Sprintf("%s:%d", healthzHost, defaultHealthzPort)
	} else {
		c.HealthzBindAddress = appendPortIfNeeded(c.HealthzBindAddress, defaultHealthzPort)
	}
	if c.MetricsBindAddress == "" {
		c.MetricsBindAddress = fmt.Sprintf("%s:%d", metricsHost, defaultMetricsPort)
	} else {
		c.MetricsBindAddress = appendPortIfNeeded(c.MetricsBindAddress, defaultMetricsPort)
	}
	if c.OOMScoreAdj == nil {
		c.OOMScoreAdj = ptrTo[int32](defaultOOMScoreAdj)
	}
	if c.IPTables.SyncPeriod.Duration == 0 {
		c.IPTables.SyncPeriod.Duration = defaultSyncPeriod
	}
	if c.IPTables.MinSyncPeriod.Duration == 0 {
		c.IPTables.MinSyncPeriod.Duration = defaultMinSyncPeriod
	}
	if c.IPTables.LocalhostNodePorts == nil {
		c.IPTables.LocalhostNodePorts = ptrTo(true)
	}
	if c.IPTables.MasqueradeBit == nil {
		c.IPTables.MasqueradeBit = ptrTo[int32](defaultMasqueradeBit)
	}
	// kube-proxy defaults ipvs.syncPeriod but not ipvs.minSyncPeriod: in
	// a file, the ipvs mode's minimum sync period defaults to 0.
	if c.IPVS.SyncPeriod.Duration == 0 {
		c.IPVS.SyncPeriod.Duration = defaultSyncPeriod
	}
	if c.NFTables.SyncPeriod.Duration == 0 {
		c.NFTables.SyncPeriod.Duration = defaultSyncPeriod
	}
	if c.NFTables.MinSyncPeriod.Duration == 0 {
		c.NFTables.MinSyncPeriod.Duration = defaultMinSyncPeriod
	}
	if c.NFTables.MasqueradeBit == nil {
		c.NFTables.MasqueradeBit = ptrTo[int32](defaultMasqueradeBit)
	}
	if c.Conntrack.MaxPerCore == nil {
		c.Conntrack.MaxPerCore = ptrTo[int32](defaultConntrackMaxPerCor)
	}
	if c.Conntrack.Min == nil {
		c.Conntrack.Min = ptrTo[int32](defaultConntrackMin)
	}
	if c.Conntrack.TCPEstablishedTimeout == nil {
		c.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: defaultTCPEstablished}
	}
	if c.Conntrack.TCPCloseWaitTimeout == nil {
		c.Conntrack.TCPCloseWaitTimeout = &metav1.Duration{Duration: defaultTCPCloseWait}
	}
	if c.ConfigSyncPeriod.Duration == 0 {
		c.ConfigSyncPeriod.Duration = defaultConfigSyncPeriod
	}
	if c.ClientConnection.ContentType == "" {
		c.ClientConnection.ContentType = defaultContentType
	}
	if c.ClientConnection.QPS == 0 {
		c.ClientConnection.QPS = defaultQPS
	}
	if c.ClientConnection.Burst == 0 {
		c.ClientConnection.Burst = defaultBurst
	}
	if c.FeatureGates == nil {
		c.FeatureGates = map[string]bool{}
	}
	if c.Logging.FlushFrequency.Duration.Duration == 0 {
		c.Logging.FlushFrequency.Duration.Duration = defaultLogFlushFrequency
	}
}

// flagDefaults is the configuration kube-proxy's flags start from: the file
// defaults applied to an empty object (kube-proxy's NewOptions), plus the
// one value that differs when it is read through flags: --ipvs-min-sync-period
// starts at 1s, not 0.
func flagDefaults() v1alpha1.KubeProxyConfiguration {
	var c v1alpha1.KubeProxyConfiguration
	setDefaults(&c)
	c.IPVS.MinSyncPeriod.Duration = defaultMinSyncPeriod
	return c
}

func ptrTo[T any](v T) *T { return &v }

// locateDecodeError returns the path of the first field of the JSON object
// js that does not decode into its field of struct type t, or "".
func locateDecodeError(js []byte, t reflect.Type, prefix string) string {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(js, &obj); err != nil {
		return ""
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		f, ok := jsonField(t, key)
		if !ok {
			continue // unknown fields are reported by the strict pass
		}
		path := prefix + key
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		// Descend into plain structs; decode leaves and types with
		// their own decoder whole.
		if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(reflect.TypeFor[json.Unmarshaler]()) {
			if p := locateDecodeError(obj[key], ft, path+"."); p != "" {
				return p
			}
			continue
		}
		if err := kjson.UnmarshalCaseSensitivePreserveInts(obj[key], reflect.New(f.Type).Interface()); err != nil {
			return path
		}
	}
	return ""
}

// jsonField finds the field of struct t that JSON key name decodes into,
// looking through embedded structs as encoding/json does.
func jsonField(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && tag == "" && f.Type.Kind() == reflect.Struct {
			if ef, ok := jsonField(f.Type, name); ok {
				return ef, true
			}
			continue
		}
		if tag == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}
