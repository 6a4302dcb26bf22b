package store

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"

	"github.com/pressly/goose/v3"
)

// migrations are embedded so that the binary carries its schema. goose
// versions them in goose_db_version, one migration per transaction.
//
//go:embed migrations
var migrations embed.FS

// MigrationStatus is one migration and whether it is applied.
type MigrationStatus struct {
	Version int64
	Name    string
	Applied bool
}

// Migrator applies the embedded migrations of one store.
type Migrator interface {
	// Migrate applies every pending migration and returns the versions applied.
	Migrate(ctx context.Context) ([]int64, error)
	// MigrationStatus lists every migration.
	MigrationStatus(ctx context.Context) ([]MigrationStatus, error)
}

func newGoose(db *sql.DB, dialect goose.Dialect, dir string, opts ...goose.ProviderOption) (*goose.Provider, error) {
	sub, err := fs.Sub(migrations, "migrations/"+dir)
	if err != nil {
		return nil, err
	}
	p, err := goose.NewProvider(dialect, db, sub, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot load migrations: %w", err)
	}
	return p, nil
}

func migrateUp(ctx context.Context, p *goose.Provider) ([]int64, error) {
	results, err := p.Up(ctx)
	var versions []int64
	for _, r := range results {
		if r.Error == nil {
			versions = append(versions, r.Source.Version)
		}
	}
	if err != nil {
		return versions, fmt.Errorf("cannot migrate: %w", err)
	}
	return versions, nil
}

func migrationStatus(ctx context.Context, p *goose.Provider) ([]MigrationStatus, error) {
	st, err := p.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot read migration status: %w", err)
	}
	out := make([]MigrationStatus, len(st))
	for i, s := range st {
		out[i] = MigrationStatus{Version: s.Source.Version, Name: s.Source.Path, Applied: s.State == goose.StateApplied}
	}
	return out, nil
}
