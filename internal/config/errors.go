package config

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/pflag"
)

// ErrHelp is returned by Parse after it printed the usage for -h/--help.
var ErrHelp = pflag.ErrHelp

// ErrVersion is returned by Parse when --version was given; main prints
// version.KubeProxyString() and exits 0, before any configuration is read
// (as kube-proxy does).
var ErrVersion = errors.New("version requested")

// ErrVersionRaw is returned for --version=raw; errors.Is(err, ErrVersion)
// also holds. main prints version.Raw().
var ErrVersionRaw = fmt.Errorf("%w (raw)", ErrVersion)

var errEmptyHostname = errors.New("empty hostname is invalid")

// FieldError is one invalid or unsupported setting. Field is a command-line
// flag ("--iptables-masquerade-bit") when the value came from the command
// line, else the path in the configuration file ("iptables.masqueradeBit").
type FieldError struct {
	Field  string
	Value  any
	Detail string
}

func (e *FieldError) Error() string {
	if e.Value == nil {
		return fmt.Sprintf("%s: %s", e.Field, e.Detail)
	}
	return fmt.Sprintf("%s: %s (got %s)", e.Field, e.Detail, formatValue(e.Value))
}

func formatValue(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("%q", x)
	case []string:
		return fmt.Sprintf("%q", x)
	case fmt.Stringer:
		return x.String()
	default:
		return fmt.Sprint(x)
	}
}

// ValidationError lists every problem found in one configuration, so an
// operator fixes them in one go rather than one restart at a time.
type ValidationError struct {
	// Source is "flags" or the --config path.
	Source string
	Errs   []*FieldError
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "invalid kube-proxy configuration (%s):", e.Source)
	for _, fe := range e.Errs {
		b.WriteString("\n  ")
		b.WriteString(fe.Error())
	}
	return b.String()
}

// Unwrap lets errors.As find each FieldError.
func (e *ValidationError) Unwrap() []error {
	out := make([]error, len(e.Errs))
	for i, fe := range e.Errs {
		out[i] = fe
	}
	return out
}

// Warning is a setting kpr accepted but that does not act as written:
// ignored as kube-proxy ignores it, deprecated, or not implemented by kpr
// without changing how the selected proxy mode behaves.
type Warning struct {
	// Field is a flag or file path, as in FieldError.
	Field   string
	Message string
}

func (w Warning) String() string { return w.Field + ": " + w.Message }
