package config

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// ParseLevel maps debug/info/warn/error to a slog level.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return 0, fmt.Errorf("%q is not a log level; use debug, info, warn or error", s)
	}
	return l, nil
}

// Logger is the JSON logger every binary uses. Durations are written as
// Go duration strings ("1.5s"), not nanoseconds, wherever they are logged.
func Logger(w io.Writer, level string) *slog.Logger {
	l, _ := ParseLevel(level)
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l, ReplaceAttr: humanDurations}))
}

func humanDurations(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// Fatal writes a start-up failure as one JSON record (level ERROR) on w:
// msg, err (the whole error, multi-line ones included), and setting (the
// settings it names) when it names any. level is the configured log level
// if it is known; a fatal error is written whatever it is.
func Fatal(w io.Writer, prog string, err error) {
	attrs := []any{"err", err.Error()}
	if s := Settings(err); len(s) > 0 {
		attrs = append(attrs, "setting", strings.Join(s, "; "))
	}
	Logger(w, "error").Error(prog+" cannot start", attrs...)
}
