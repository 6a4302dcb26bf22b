package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/llmusage/llmusage/internal/cli"
	"github.com/llmusage/llmusage/store"
)

func migrateCommand() *cli.Command {
	return &cli.Command{
		Name:         "migrate",
		Usage:        "apply the embedded schema migrations (adopting the seed's groq_* tables if present)",
		OnUsageError: usageError,
		Flags: append(databaseFlags(),
			dataDirFlag(),
			boolFlag("status", false, "list the migrations and whether each is applied, changing nothing"),
		),
		Action: func(c *cli.Context) error {
			ctx := c.Context
			opts, err := storeOptions(c)
			if err != nil {
				return err
			}
			if c.Bool("status") {
				s, err := store.Open(ctx, opts)
				if err != nil {
					return err
				}
				defer s.Close()
				st, err := s.MigrationStatus(ctx)
				if err != nil {
					return err
				}
				for _, m := range st {
					state := "pending"
					if m.Applied {
						state = "applied"
					}
					fmt.Fprintf(c.App.Writer, "%05d %-8s %s\n", m.Version, state, m.Name)
				}
				return nil
			}
			s, err := openStore(ctx, opts, slog.New(slog.NewTextHandler(c.App.ErrWriter, nil)), true)
			if err != nil {
				return err
			}
			return s.Close()
		},
	}
}

func databaseURLFlag() cli.Flag {
	return stringFlag("database-url", "", "postgres://user:password@host/db, sqlite:/path/file.db; empty: SQLite in --data-dir")
}

// databaseFlags are --database-url and how to reach it, shared by serve
// and migrate.
func databaseFlags() []cli.Flag {
	return []cli.Flag{
		databaseURLFlag(),
		intFlag("database-max-conns", store.DefaultMaxConns, "most connections to --database-url"),
		stringFlag("database-exec-mode", "auto", "how statements are sent: auto, or one of pgx's modes"),
		stringFlag("database-listen-url", "", "a direct connection for LISTEN only, where --database-url goes through a pooler"),
	}
}

func dataDirFlag() cli.Flag {
	return stringFlag("data-dir", "./llmusage-data", "directory of the spool and of the embedded SQLite database")
}

// storeOptions reads and checks the database flags.
func storeOptions(c *cli.Context) (store.Options, error) {
	opts := store.Options{DatabaseURL: c.String("database-url"), DataDir: c.String("data-dir"),
		MaxConns: c.Int("database-max-conns"), ExecMode: c.String("database-exec-mode"), ListenURL: c.String("database-listen-url")}
	if opts.MaxConns < 1 {
		return store.Options{}, fmt.Errorf("cannot use --database-max-conns %d: want at least 1", opts.MaxConns)
	}
	if err := store.ParseExecMode(opts.ExecMode); err != nil {
		return store.Options{}, err
	}
	if opts.ListenURL != "" {
		if kind, _ := store.Kind(store.Options{DatabaseURL: opts.ListenURL}); kind != "postgres" {
			return store.Options{}, fmt.Errorf("cannot use --database-listen-url %s: want postgres:// or postgresql://", store.Redact(opts.ListenURL))
		}
		if kind, _ := store.Kind(opts); kind != "postgres" {
			return store.Options{}, errors.New("cannot use --database-listen-url without a postgres:// --database-url")
		}
	}
	return opts, nil
}

// openStore opens the selected store and, if migrate, brings its schema
// up to date, logging what it applied.
func openStore(ctx context.Context, opts store.Options, logger *slog.Logger, migrate bool) (store.Store, error) {
	kind, target := store.Kind(opts)
	if kind == "postgres" {
		target = store.Redact(target)
	}
	s, err := store.Open(ctx, opts)
	if err != nil {
		return nil, err
	}
	if migrate {
		applied, err := s.Migrate(ctx)
		if err != nil {
			s.Close()
			return nil, err
		}
		logger.Info("database schema up to date", "store", kind, "database", target, "applied", fmt.Sprint(applied))
	}
	return s, nil
}
