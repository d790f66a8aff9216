// Package config loads each binary's settings from the environment
// (kelseyhightower/envconfig) and then from flags, into one struct per binary
// whose tags are the single source of every setting's names:
//
//	Listen string `envconfig:"SIGNER_LISTEN" flag:"listen" default:":8443" desc:"..."`
//
// Flags default to the environment's value, so a flag overrides its variable;
// a repeatable flag (a slice) adds to the variable's comma-separated list.
// Fields tagged secret:"true" have no flag, so secrets never show in a
// process listing. Each struct's Validate names both spellings of a bad
// setting via Name.
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"
)

type field struct {
	v                 reflect.Value
	name, env, fl     string
	desc, def, secret string
	shared            bool // in an embedded block envconfig skips: Bind reads it
}

func fields(cfg any) []field {
	var out []field
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := range t.NumField() {
			sf := t.Field(i)
			if sf.Anonymous && sf.Type.Kind() == reflect.Struct {
				walk(v.Field(i), sf.Tag.Get("prefix"))
				continue
			}
			env := sf.Tag.Get("envconfig")
			if prefix != "" {
				// A shared block (Identity): its own tag is the name after the
				// embedding binary's prefix.
				env = prefix + sf.Tag.Get("env")
			}
			if env == "" {
				continue
			}
			out = append(out, field{v: v.Field(i), name: sf.Name, env: env, fl: sf.Tag.Get("flag"),
				desc: sf.Tag.Get("desc"), def: sf.Tag.Get("default"), secret: sf.Tag.Get("secret"), shared: prefix != ""})
		}
	}
	walk(reflect.ValueOf(cfg).Elem(), "")
	return out
}

// Name returns "--flag / ENV" (or just "ENV" for secrets) for the struct field
// called fieldName; Validate errors use it so an operator can fix either.
func Name(cfg any, fieldName string) string {
	for _, f := range fields(cfg) {
		if f.name == fieldName {
			if f.fl == "" {
				return f.env
			}
			return "--" + f.fl + " / " + f.env
		}
	}
	panic("config: no field " + fieldName)
}

// Errorf formats a setting error: "<names>: <problem>". The error is a
// *SettingError, so a fatal start-up record can carry the setting apart.
func Errorf(cfg any, fieldName, format string, args ...any) error {
	return &SettingError{Setting: Name(cfg, fieldName), Problem: fmt.Sprintf(format, args...)}
}

// SettingError is a problem with one setting, named by both spellings.
type SettingError struct {
	Setting string // "--flag / ENV" (or "ENV"; several joined by ", ")
	Problem string
	Err     error // the cause, if any (Problem holds its text)
}

func (e *SettingError) Error() string { return e.Setting + ": " + e.Problem }
func (e *SettingError) Unwrap() error { return e.Err }

// Settings lists the settings err names (each SettingError joined or
// wrapped in it), in order, without repeats.
func Settings(err error) []string {
	var out []string
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case nil:
			return
		case *SettingError:
			if !slices.Contains(out, e.Setting) {
				out = append(out, e.Setting)
			}
			return
		case interface{ Unwrap() []error }:
			for _, x := range e.Unwrap() {
				walk(x)
			}
			return
		}
		walk(errors.Unwrap(err))
	}
	walk(err)
	return out
}

// ErrVersion is returned by Load when --version was given: the binary
// prints its build and exits 0.
var ErrVersion = errors.New("version requested")

// Load fills cfg from the environment, then from args parsed by a flag set
// named prog. Variables starting with envPrefix that no field declares are
// an error: a misspelt setting must not silently leave a default in place.
//
// --version wins over everything else (the environment is not read), and
// an argument that is not a flag is refused: every setting is a flag or a
// variable, so a stray word is a mistake (a value after a boolean flag, a
// missing "--"), never silently ignored.
func Load(prog, envPrefix string, cfg any, args []string) error {
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-version" || a == "--version" || a == "--version=true" || a == "-version=true" {
			return ErrVersion
		}
	}
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	if err := Bind(fs, envPrefix, cfg); err != nil {
		return err
	}
	fs.Bool("version", false, "print the version, commit and Go version, and exit")
	// The usage goes out for -h only: a bad flag is the binary's one fatal
	// record, not the record after a page of usage.
	var usage bytes.Buffer
	out := fs.Output()
	fs.SetOutput(&usage)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			out.Write(usage.Bytes())
			return err
		}
		return fmt.Errorf("%w (see -h for the flags)", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: every setting is a --flag or its variable (see -h); a boolean flag takes its value as --flag=false", fs.Arg(0))
	}
	return nil
}

// Bind fills cfg from the environment and registers its flags on fs.
func Bind(fs *flag.FlagSet, envPrefix string, cfg any) error {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage of %s (every flag also reads the environment variable named in brackets):\n", fs.Name())
		fs.PrintDefaults()
		for _, f := range fields(cfg) {
			if f.fl == "" {
				fmt.Fprintf(fs.Output(), "  [%s] (environment only)\n    \t%s\n", f.env, f.desc)
			}
		}
	}
	// Prefix "": the tags carry full names, so envconfig's fallback to an
	// unprefixed variable (a stray LISTEN or STORE) never applies.
	if err := envconfig.Process("", cfg); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("%s: cannot parse %q as %s: %v", Name(cfg, pe.FieldName), pe.Value, pe.TypeName, pe.Err)
		}
		return fmt.Errorf("config: %w", err)
	}
	known := map[string]bool{}
	for _, f := range fields(cfg) {
		known[f.env] = true
		if f.shared {
			s, set := os.LookupEnv(f.env)
			if !set {
				s = f.def
			}
			if s != "" {
				if err := (&value{f: f}).Set(s); err != nil {
					return fmt.Errorf("%s: cannot parse %q: %v", Name(cfg, f.name), s, err)
				}
			}
		}
		if f.fl == "" {
			continue
		}
		usage := fmt.Sprintf("%s [%s]", f.desc, f.env)
		if f.v.Kind() == reflect.Slice {
			usage = fmt.Sprintf("%s (repeatable) [%s, comma-separated]", f.desc, f.env)
		}
		if f.v.Kind() == reflect.Bool {
			fs.BoolVar(f.v.Addr().Interface().(*bool), f.fl, f.v.Bool(), usage)
			continue
		}
		_, fromEnv := os.LookupEnv(f.env)
		// A repeatable flag adds to its variable's list, but replaces a
		// list that only holds the built-in default.
		fs.Var(&value{f: f, replace: f.v.Kind() == reflect.Slice && !fromEnv}, f.fl, usage)
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, envPrefix) && !known[k] {
			return fmt.Errorf("unknown setting %s: no such variable (see -h for the list)", k)
		}
	}
	return nil
}

// value is a flag.Value over one field.
type value struct {
	f       field
	replace bool // the next Set of a slice starts a new list
}

func (v *value) String() string {
	if v == nil || !v.f.v.IsValid() {
		return ""
	}
	if v.f.secret != "" {
		return "<secret>"
	}
	switch x := v.f.v.Interface().(type) {
	case []string:
		return strings.Join(x, ",")
	case []int:
		s := make([]string, len(x))
		for i, n := range x {
			s[i] = strconv.Itoa(n)
		}
		return strings.Join(s, ",")
	}
	return fmt.Sprint(v.f.v.Interface())
}

func (v *value) Set(s string) error {
	fv := v.f.v
	switch fv.Kind() {
	case reflect.String:
		fv.SetString(s)
	case reflect.Int, reflect.Int64:
		if fv.Type() == reflect.TypeOf(time.Duration(0)) {
			d, err := time.ParseDuration(s)
			if err != nil {
				return err
			}
			fv.SetInt(int64(d))
			return nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return err
		}
		fv.SetInt(n)
	case reflect.Slice:
		if v.replace {
			fv.Set(reflect.MakeSlice(fv.Type(), 0, 1))
			v.replace = false
		}
		switch fv.Type().Elem().Kind() {
		case reflect.String:
			fv.Set(reflect.Append(fv, reflect.ValueOf(s)))
		case reflect.Int:
			n, err := strconv.Atoi(s)
			if err != nil {
				return err
			}
			fv.Set(reflect.Append(fv, reflect.ValueOf(n)))
		default:
			return fmt.Errorf("config: unsupported slice type %s", fv.Type())
		}
	default:
		return fmt.Errorf("config: unsupported type %s", fv.Type())
	}
	return nil
}

// ReadSecret returns the value of a secret given inline or as a file path,
// trimmed; inline wins. Neither set returns "".
func ReadSecret(inline, file string) (string, error) {
	if inline != "" {
		return inline, nil
	}
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
