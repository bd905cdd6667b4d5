// Package settings defines the command-line flags of omicsq's commands,
// each preset by an environment variable, and the ones the worker and
// enqueue share: the NATS connection, the names of the streams and subjects,
// and the message size limit. A shared flag is defined once here, so it has
// the same name, variable, default and meaning in every command and one
// environment serves them all.
package settings

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// Bind defines a flag on fs; a Setting's Bind sets its type, default and
// destination.
type Bind func(fs *flag.FlagSet, name, usage string)

// Setting is one flag and the environment variable that presets it (Env
// "": none).
type Setting struct {
	Flag, Env, Usage string
	Bind             Bind
}

// Row is a Setting written as a row of a table: flag, variable, usage and
// binding in that order, so a table in another package needs no field keys.
func Row(flag, env, usage string, bind Bind) Setting {
	return Setting{Flag: flag, Env: env, Usage: usage, Bind: bind}
}

// String binds a string flag to p.
func String(p *string, def string) Bind {
	return func(fs *flag.FlagSet, n, u string) { fs.StringVar(p, n, def, u) }
}

// Bool binds a boolean flag to p.
func Bool(p *bool, def bool) Bind {
	return func(fs *flag.FlagSet, n, u string) { fs.BoolVar(p, n, def, u) }
}

// Int binds an integer flag to p.
func Int(p *int, def int) Bind {
	return func(fs *flag.FlagSet, n, u string) { fs.IntVar(p, n, def, u) }
}

// Float binds a floating-point flag to p.
func Float(p *float64, def float64) Bind {
	return func(fs *flag.FlagSet, n, u string) { fs.Float64Var(p, n, def, u) }
}

// Duration binds a duration flag to p.
func Duration(p *time.Duration, def time.Duration) Bind {
	return func(fs *flag.FlagSet, n, u string) { fs.DurationVar(p, n, def, u) }
}

// Strings binds a repeatable string flag to p: each use appends its value.
func Strings(p *[]string) Bind {
	return func(fs *flag.FlagSet, n, u string) { fs.Var((*stringList)(p), n, u) }
}

// stringList is the flag.Value of Strings.
type stringList []string

func (s *stringList) String() string {
	if s == nil { // the flag package may ask a nil receiver
		return ""
	}
	return strings.Join(*s, ",")
}

func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// ParseCommand parses the command line of the command named name, as Parse
// does, on a flag set that reports to w and whose usage (--help, or a flag
// error) is usage followed by the flags and their defaults.
func ParseCommand(name, usage string, w io.Writer, table []Setting, args []string, getenv func(string) string) ([]string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(w)
	fs.Usage = func() {
		fmt.Fprint(w, usage)
		fs.PrintDefaults()
	}
	return Parse(fs, table, args, getenv)
}

// Parse defines table on fs (a usage names its variable), presets the
// flags from the environment, then parses args, so an explicit flag wins.
// Flags and positional arguments may interleave ("--" ends the flags); it
// returns the positional arguments. A parse error of args, or flag.ErrHelp,
// is the flag package's own.
func Parse(fs *flag.FlagSet, table []Setting, args []string, getenv func(string) string) ([]string, error) {
	for _, s := range table {
		usage := s.Usage
		if s.Env != "" {
			usage += " (env " + s.Env + ")"
		}
		s.Bind(fs, s.Flag, usage)
	}
	for _, s := range table {
		if s.Env == "" {
			continue
		}
		if v := getenv(s.Env); v != "" {
			if err := fs.Set(s.Flag, v); err != nil {
				// The value is not repeated: the environment may hold
				// secrets. The flag package's errors do not hold it either.
				return nil, fmt.Errorf("environment %s (--%s): want %s: %w", s.Env, s.Flag, accepted(fs.Lookup(s.Flag)), err)
			}
		}
	}
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// accepted describes the values a flag's type accepts.
func accepted(f *flag.Flag) string {
	switch kind, _ := flag.UnquoteUsage(f); kind {
	case "":
		return "true or false"
	case "int":
		return "an integer"
	case "float":
		return "a number"
	case "duration":
		return "a duration such as 500ms, 30s or 720h"
	default:
		return "a " + kind
	}
}
