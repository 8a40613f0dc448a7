package image

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// entry is one member of a newc archive as the kernel would read it.
type entry struct {
	name   string
	mode   uint32
	data   string
	offset int // where its header starts in the stream
}

// readNewc parses a stream of concatenated newc archives (some gzipped)
// the way the kernel's initramfs unpacker does: zeros between archives are
// skipped, an uncompressed archive must start 4-byte aligned.
func readNewc(t *testing.T, b []byte) []entry {
	t.Helper()
	var out []entry
	off := 0
	for off < len(b) {
		switch {
		case b[off] == 0:
			off++
		case bytes.HasPrefix(b[off:], []byte{0x1f, 0x8b}):
			// countReader is an io.ByteReader, so gzip reads exactly the
			// member and its count says where the member ended.
			cr := &countReader{r: bytes.NewReader(b[off:])}
			zr, err := gzip.NewReader(cr)
			if err != nil {
				t.Fatal(err)
			}
			zr.Multistream(false)
			plain, err := io.ReadAll(zr)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, readNewc(t, plain)...)
			off += cr.n
		case bytes.HasPrefix(b[off:], []byte("070701")):
			if off%4 != 0 {
				t.Fatalf("uncompressed archive at offset %d, not 4-byte aligned: the kernel would reject it", off)
			}
			for {
				h := string(b[off : off+110])
				field := func(i int) int {
					v, err := strconv.ParseUint(h[6+8*i:14+8*i], 16, 32)
					if err != nil {
						t.Fatalf("bad header %q: %v", h, err)
					}
					return int(v)
				}
				mode, size, nameLen := field(1), field(6), field(11)
				name := string(b[off+110 : off+110+nameLen-1])
				start := off
				off = align4(off + 110 + nameLen)
				data := string(b[off : off+size])
				off = align4(off + size)
				if name == "TRAILER!!!" {
					break
				}
				out = append(out, entry{name: name, mode: uint32(mode), data: data, offset: start})
			}
		default:
			t.Fatalf("garbage at offset %d: %q", off, b[off:min(off+16, len(b))])
		}
	}
	return out
}

func align4(n int) int { return (n + 3) &^ 3 }

type countReader struct {
	r *bytes.Reader
	n int
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func (c *countReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}

func TestCPIOWriterEntries(t *testing.T) {
	var buf bytes.Buffer
	w := NewCPIOWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Dir("etc", 0o755))
	must(w.File("/etc/protocols", 0o644, 3, strings.NewReader("tcp")))
	must(w.Symlink("sbin/ip", "/bin/ip"))
	must(w.File("empty", 0o600, 0, nil))
	must(w.Close())
	if err := w.File("late", 0o644, 1, strings.NewReader("x")); err == nil {
		t.Error("write after Close: no error")
	}
	got := readNewc(t, buf.Bytes())
	want := []entry{
		{name: "etc", mode: modeDir | 0o755},
		{name: "etc/protocols", mode: modeFile | 0o644, data: "tcp"},
		{name: "sbin/ip", mode: modeSymlink | 0o777, data: "/bin/ip"},
		{name: "empty", mode: modeFile | 0o600},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.name != w.name || g.mode != w.mode || g.data != w.data {
			t.Errorf("entry %d = {%q %o %q}, want {%q %o %q}", i, g.name, g.mode, g.data, w.name, w.mode, w.data)
		}
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d not a multiple of 4", buf.Len())
	}
}

func TestCPIOWriterRejectsShortData(t *testing.T) {
	w := NewCPIOWriter(io.Discard)
	if err := w.File("f", 0o644, 10, strings.NewReader("short")); err == nil {
		t.Error("size larger than the data: no error")
	}
	if err := w.Dir("/", 0o755); err == nil {
		t.Error("empty name: no error")
	}
}

// The overlay must start 4-byte aligned whatever the compressed base's
// length, or the kernel stops unpacking ("invalid magic at start of
// compressed archive") and boots without /init.
func TestWriteInitrdAlignsTheOverlay(t *testing.T) {
	dir := t.TempDir()
	for extra := 0; extra < 4; extra++ {
		t.Run(fmt.Sprint(extra), func(t *testing.T) {
			root := filepath.Join(dir, fmt.Sprintf("root%d", extra))
			if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
				t.Fatal(err)
			}
			// Vary the content so the gzip length varies.
			if err := os.WriteFile(filepath.Join(root, "etc", "f"), []byte(strings.Repeat("x", extra)+"base"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("/bin/busybox", filepath.Join(root, "sh")); err != nil {
				t.Fatal(err)
			}
			base := filepath.Join(dir, fmt.Sprintf("base%d.cpio.gz", extra))
			if err := writeDirArchive(root, base, true); err != nil {
				t.Fatal(err)
			}
			src := filepath.Join(dir, "agent")
			if err := os.WriteFile(src, []byte("agent-binary"), 0o755); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, fmt.Sprintf("initrd%d", extra))
			if err := WriteInitrd(out, base, []OverlayFile{
				{Path: "/init", Src: src, Mode: 0o755},
				{Path: "/opt/kpr/bin/cfg", Data: []byte("x=1")},
			}); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]entry{}
			for _, e := range readNewc(t, b) {
				got[e.name] = e
			}
			for name, data := range map[string]string{"etc/f": strings.Repeat("x", extra) + "base", "sh": "/bin/busybox", "init": "agent-binary", "opt/kpr/bin/cfg": "x=1"} {
				if got[name].data != data {
					t.Errorf("%s = %q, want %q (entries %v)", name, got[name].data, data, got)
				}
			}
			if got["init"].mode != modeFile|0o755 {
				t.Errorf("/init mode %o, want executable", got["init"].mode)
			}
			for _, d := range []string{"opt", "opt/kpr", "opt/kpr/bin"} {
				if got[d].mode&modeDir != modeDir {
					t.Errorf("overlay parent %s missing", d)
				}
			}
		})
	}
}
