package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/llmusage/llmusage/internal/cli"
)

// byteSize is a flag value in bytes, written as 1048576, 512KiB, 256MiB or
// 1GiB (KB, MB and GB are powers of 1000), so that every size flag reads
// the same way.
type byteSize int64

// byteSizeFlag is a size flag with its LLMUSAGE_ environment variable.
func byteSizeFlag(name string, value int64, usage string) *cli.GenericFlag {
	v := byteSize(value)
	return &cli.GenericFlag{Name: name, Value: &v, Usage: usage, EnvVars: envVars(name)}
}

// bytesOf reads a byteSizeFlag.
func bytesOf(c *cli.Context, name string) int64 {
	return int64(*c.Generic(name).(*byteSize))
}

// Set parses a size; it is how the command line assigns the flag.
func (b *byteSize) Set(s string) error {
	n, err := parseBytes(s)
	if err != nil {
		return err
	}
	*b = byteSize(n)
	return nil
}

// String shows the size as the help text's default.
func (b *byteSize) String() string {
	n := int64(*b)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// parseBytes parses 1048576, 512KiB, 256MiB, 1GiB (or KB, MB, GB as powers of 1000).
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(v), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("want a positive size such as 256MiB")
	}
	return n * mult, nil
}
