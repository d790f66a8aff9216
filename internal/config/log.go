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

// Logger is the JSON logger every binary uses.
func Logger(w io.Writer, level string) *slog.Logger {
	l, _ := ParseLevel(level)
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}
