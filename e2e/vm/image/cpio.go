package image

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"
)

// The Linux initramfs format is a "newc" cpio archive (SVR4 without CRC,
// magic 070701): a 110-byte ASCII-hex header per entry, the NUL-terminated
// name, the data, each padded to 4 bytes, closed by an entry named
// TRAILER!!!. Several such archives, each compressed or not, may be
// concatenated; the kernel unpacks them in order (later entries win), which
// is how a cached base image and a per-run overlay become one initrd.

// CPIOWriter writes a newc cpio archive.
type CPIOWriter struct {
	w      *bufio.Writer
	ino    uint32
	off    int64
	closed bool
}

// NewCPIOWriter starts an archive on w.
func NewCPIOWriter(w io.Writer) *CPIOWriter {
	return &CPIOWriter{w: bufio.NewWriterSize(w, 1<<20), ino: 1}
}

// Mode bits of cpio entries (as in stat(2)).
const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
)

// Dir adds a directory.
func (c *CPIOWriter) Dir(name string, perm uint32) error {
	return c.entry(name, modeDir|perm&0o7777, 0, nil)
}

// Symlink adds a symbolic link name -> target.
func (c *CPIOWriter) Symlink(name, target string) error {
	return c.entry(name, modeSymlink|0o777, int64(len(target)), strings.NewReader(target))
}

// File adds a regular file of size bytes read from r.
func (c *CPIOWriter) File(name string, perm uint32, size int64, r io.Reader) error {
	return c.entry(name, modeFile|perm&0o7777, size, r)
}

// Close writes the trailer and flushes. It does not close the underlying
// writer.
func (c *CPIOWriter) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	if err := c.header("TRAILER!!!", 0, 0, 0, 1); err != nil {
		return err
	}
	return c.w.Flush()
}

func (c *CPIOWriter) entry(name string, mode uint32, size int64, r io.Reader) error {
	if c.closed {
		return fmt.Errorf("cpio: write of %q after Close", name)
	}
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if name == "" {
		return fmt.Errorf("cpio: empty entry name")
	}
	if size < 0 || size > 0xffffffff {
		return fmt.Errorf("cpio: %s: size %d does not fit newc's 32 bits", name, size)
	}
	nlink := uint32(1)
	if mode&modeDir == modeDir {
		nlink = 2
	}
	c.ino++
	if err := c.header(name, mode, uint32(size), c.ino, nlink); err != nil {
		return err
	}
	if size > 0 {
		n, err := io.CopyN(c.w, r, size)
		c.off += n
		if err != nil {
			return fmt.Errorf("cpio: %s: %w", name, err)
		}
	}
	return c.pad()
}

func (c *CPIOWriter) header(name string, mode, size, ino, nlink uint32) error {
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize, check. mtime stays 0 so
	// the same inputs give the same bytes.
	h := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	n, err := io.WriteString(c.w, h+name+"\x00")
	c.off += int64(n)
	if err != nil {
		return err
	}
	return c.pad()
}

func (c *CPIOWriter) pad() error {
	if rem := c.off % 4; rem != 0 {
		n, err := c.w.Write(make([]byte, 4-rem))
		c.off += int64(n)
		return err
	}
	return nil
}
