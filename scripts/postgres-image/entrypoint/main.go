// Command entrypoint starts the project's Postgres test image, which is
// assembled from Debian's postgresql package because no registry is
// reachable (see scripts/build-postgres-image.sh). It honours the usual
// POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB and POSTGRES_HOST_AUTH_METHOD
// variables, so testcontainers-go's postgres module can drive it.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "entrypoint:", err)
		os.Exit(1)
	}
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run(args []string) error {
	pgdata := env("PGDATA", "/var/lib/postgresql/data")
	user := env("POSTGRES_USER", "postgres")
	db := env("POSTGRES_DB", user)
	auth := env("POSTGRES_HOST_AUTH_METHOD", "scram-sha-256")
	password := os.Getenv("POSTGRES_PASSWORD")
	if password == "" && auth != "trust" {
		return fmt.Errorf("POSTGRES_PASSWORD is required (or POSTGRES_HOST_AUTH_METHOD=trust)")
	}
	if _, err := os.Stat(filepath.Join(pgdata, "PG_VERSION")); os.IsNotExist(err) {
		if err := initialise(pgdata, user, password, auth, db); err != nil {
			return err
		}
	}
	if len(args) > 0 && args[0] == "postgres" {
		args = args[1:]
	}
	bin, err := exec.LookPath("postgres")
	if err != nil {
		return err
	}
	argv := append([]string{"postgres", "-D", pgdata}, args...)
	return syscall.Exec(bin, argv, os.Environ())
}

func initialise(pgdata, user, password, auth, db string) error {
	pwfile := filepath.Join(os.TempDir(), "pwfile")
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	initArgs := []string{"-D", pgdata, "--username=" + user, "--auth-local=trust", "--auth-host=" + auth,
		"--locale=C", "--encoding=UTF8", "--no-instructions"}
	if password != "" {
		initArgs = append(initArgs, "--pwfile="+pwfile)
	}
	if err := runCmd("", "initdb", initArgs...); err != nil {
		return err
	}
	conf, err := os.OpenFile(filepath.Join(pgdata, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	fmt.Fprintln(conf, "listen_addresses = '*'")
	fmt.Fprintln(conf, "timezone = 'UTC'")
	conf.Close()
	hba, err := os.OpenFile(filepath.Join(pgdata, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	fmt.Fprintf(hba, "host all all all %s\n", auth)
	hba.Close()
	if db != "postgres" {
		stmt := fmt.Sprintf("CREATE DATABASE \"%s\";\n", strings.ReplaceAll(db, `"`, `""`))
		if err := runCmd(stmt, "postgres", "--single", "-j", "-D", pgdata, "postgres"); err != nil {
			return fmt.Errorf("create database %s: %w", db, err)
		}
	}
	// POSTGRES_INIT_SQL: statements (each ending in ";" on its own line end)
	// run once, as the superuser in the new database, like the official
	// image's docker-entrypoint-initdb.d; e.g. a second, unprivileged role.
	if sql := strings.TrimSpace(os.Getenv("POSTGRES_INIT_SQL")); sql != "" {
		// Single-user mode with -j ends a statement at ";" and a blank line.
		stmts := strings.ReplaceAll(sql, ";\n", ";\n\n") + "\n\n"
		if err := runCmd(stmts, "postgres", "--single", "-j", "-D", pgdata, db); err != nil {
			return fmt.Errorf("POSTGRES_INIT_SQL: %w", err)
		}
	}
	return nil
}

func runCmd(stdin, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	return cmd.Run()
}
