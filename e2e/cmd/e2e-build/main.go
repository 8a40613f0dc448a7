// Command e2e-build builds (or finds cached) the binaries the e2e harness runs
// and prints their paths. Run from the e2e module: `go run ./cmd/e2e-build`.
package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/kpr-proxy/kpr/e2e/build"
)

func main() {
	force := flag.Bool("force", false, "rebuild even if the cache is current")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: e2e-build [-force] [binary ...]\nbinaries:")
		for _, b := range build.Binaries() {
			fmt.Fprintf(os.Stderr, " %s", b.Name)
		}
		fmt.Fprintln(os.Stderr)
	}
	flag.Parse()
	start := time.Now()
	res, err := build.Ensure(build.Config{Names: flag.Args(), Force: *force})
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e-build:", err)
		os.Exit(1)
	}
	names := make([]string, 0, len(res))
	for n := range res {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Printf("%s\t%s\n", n, res[n])
	}
	fmt.Fprintf(os.Stderr, "e2e-build: done in %s\n", time.Since(start).Round(100*time.Millisecond))
}
