package ipt

import (
	"reflect"
	"testing"
)

func TestTokenize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"-A KPR-SVC-X -j DNAT", []string{"-A", "KPR-SVC-X", "-j", "DNAT"}},
		{"  -m comment\t--comment  a  ", []string{"-m", "comment", "--comment", "a"}},
		{`--comment "ns/web cluster IP" -j X`, []string{"--comment", "ns/web cluster IP", "-j", "X"}},
		{`--comment "say \"hi\"" -j X`, []string{"--comment", `say "hi"`, "-j", "X"}},
		{`--comment ""`, []string{"--comment", ""}},
		{`--comment "unterminated to the end`, []string{"--comment", "unterminated to the end"}},
		{"", nil},
	} {
		if got := Tokenize(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Tokenize(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
