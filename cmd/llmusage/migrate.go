package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/urfave/cli/v2"

	"github.com/llmusage/llmusage/store"
)

func migrateCommand() *cli.Command {
	return &cli.Command{
		Name:         "migrate",
		Usage:        "apply the embedded schema migrations (adopting the seed's groq_* tables if present)",
		OnUsageError: usageError,
		Flags: []cli.Flag{
			databaseURLFlag(),
			dataDirFlag(),
			boolFlag("status", false, "list the migrations and whether each is applied, changing nothing"),
		},
		Action: func(c *cli.Context) error {
			ctx := c.Context
			if c.Bool("status") {
				s, err := store.Open(ctx, storeOptions(c))
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
			s, err := openStore(ctx, storeOptions(c), slog.New(slog.NewTextHandler(c.App.ErrWriter, nil)), true)
			if err != nil {
				return err
			}
			return s.Close()
		},
	}
}

func databaseURLFlag() cli.Flag {
	return stringFlag("database-url", "", "postgres://user:password@host/db for Postgres, sqlite:/path/file.db, or empty for <data-dir>/llmusage.db")
}

func dataDirFlag() cli.Flag {
	return stringFlag("data-dir", "./llmusage-data", "directory of the embedded database (and, later, the spool)")
}

func storeOptions(c *cli.Context) store.Options {
	return store.Options{DatabaseURL: c.String("database-url"), DataDir: c.String("data-dir")}
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
