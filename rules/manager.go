package rules

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/llmusage/llmusage/pricing"
)

// Source is a database's rule tables; the stores implement it.
type Source interface {
	// RuleRows reads the rows of llm_rate_limit_configs, then of
	// llm_rate_limits, each in id order.
	RuleRows(ctx context.Context) ([]Row, error)
	// WatchRules calls changed soon after the rule tables change, until
	// ctx ends.
	WatchRules(ctx context.Context, changed func()) error
}

// Options configure a Manager.
type Options struct {
	// File is the limits file's path; empty for none.
	File string
	// DB holds the database's rules; nil for none.
	DB Source
	// Logger logs reloads and shadowed rules; slog.Default() when nil.
	Logger *slog.Logger
	// Prices is the table the overrides apply over; the embedded one
	// when nil. If DB is also a PriceSource, its llm_model_prices rows
	// are read and reloaded with the rule rows.
	Prices *pricing.Table
}

// Manager owns the rules in force: it reads the limits file and the
// database's rows, merges them, and reloads them when either changes.
type Manager struct {
	// opts are the Options as given.
	opts Options
	// logger is opts.Logger or the default.
	logger *slog.Logger
	// mu serialises reloads: file and rows change together with set.
	mu sync.Mutex
	// file is the limits file last loaded; nil without one.
	file *File
	// rows are the database's rows last read.
	rows []Row
	// prices are the database's llm_model_prices rows last read.
	prices []PriceRow
	// base is Options.Prices or the embedded table.
	base *pricing.Table
	// apply hands a new Set to the limiter and intake; nil until Run.
	apply func(*Set) error
	// set is the Set in force, for readers outside reloads.
	set atomic.Pointer[Set]
	// stale is set while the database's rows in force may not be its
	// latest: its last read failed (at start, or a reload during an
	// outage). Run reads them again until a read succeeds, since a watch
	// only reports changes made after it started.
	stale atomic.Bool
}

// staleRetry is how often Run reads the database's rows again while
// stale: changes apply within about a second.
const staleRetry = time.Second

// readPrices reads llm_model_prices, if the database has prices.
func (m *Manager) readPrices(ctx context.Context) ([]PriceRow, error) {
	ps, ok := m.opts.DB.(PriceSource)
	if !ok {
		return nil, nil
	}
	return ps.PriceRows(ctx)
}

// ErrNoFile is returned by ReloadFile when no limits file was given.
var ErrNoFile = errors.New("cannot reload the limits file: none was given (--limits-file)")

// New loads the limits file, whose errors are returned, and the
// database's rows, whose errors are logged: the sidecar then starts on the
// file's rules and reads the rows again when the database is back.
func New(ctx context.Context, opts Options) (*Manager, error) {
	m := &Manager{opts: opts, logger: opts.Logger, base: opts.Prices}
	if m.logger == nil {
		m.logger = slog.Default()
	}
	if m.base == nil {
		var err error
		if m.base, err = pricing.Embedded(); err != nil {
			return nil, err
		}
	}
	if opts.File != "" {
		f, err := LoadFile(opts.File)
		if err != nil {
			return nil, err
		}
		m.file = f
	}
	if opts.DB != nil {
		rows, err := opts.DB.RuleRows(ctx)
		if err != nil {
			m.logger.Error("cannot read limit rules from the database; starting with the limits file's", "error", err)
			m.stale.Store(true)
		}
		m.rows = rows
		if prices, err := m.readPrices(ctx); err != nil {
			m.logger.Error("cannot read model prices from the database; starting with the limits file's", "error", err)
			m.stale.Store(true)
		} else {
			m.prices = prices
		}
	}
	m.set.Store(m.merge(m.file, m.rows, m.prices))
	return m, nil
}

// Set returns the rules in force.
func (m *Manager) Set() *Set { return m.set.Load() }

// Stale tells whether the last read of the database's rows failed: the
// rules in force may then lack some of its rows (its budgets among them)
// until a read succeeds.
func (m *Manager) Stale() bool { return m.stale.Load() }

// Run reloads the limits file on SIGHUP and the database's rows when they
// change, handing each new Set to apply, until ctx ends. A Set that apply
// refuses is logged and the one in force stays.
func (m *Manager) Run(ctx context.Context, apply func(*Set) error) {
	m.mu.Lock()
	m.apply = apply
	m.mu.Unlock()
	if m.opts.DB != nil {
		go func() {
			_ = m.opts.DB.WatchRules(ctx, func() {
				if err := m.ReloadDB(ctx); err != nil && ctx.Err() == nil {
					m.logger.Error("limit rules not reloaded from the database; the rules in force stay", "error", err)
				}
			})
		}()
		go m.refreshStale(ctx)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if err := m.ReloadFile(); err != nil {
			m.logger.Error("limits file not reloaded; the previous rules stay in force", "error", err)
		}
	}
}

// refreshStale reads the database's rows again every staleRetry while
// the last read failed, until ctx ends. Its failures are not logged: the
// failed read that made the rows stale was, and the store reports the
// outage.
func (m *Manager) refreshStale(ctx context.Context) {
	t := time.NewTicker(staleRetry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if m.stale.Load() {
			_ = m.ReloadDB(ctx)
		}
	}
}

// ReloadFile rereads the limits file. A file that does not load changes
// nothing.
func (m *Manager) ReloadFile() error {
	if m.opts.File == "" {
		return ErrNoFile
	}
	f, err := LoadFile(m.opts.File)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.update(f, m.rows, m.prices); err != nil {
		return err
	}
	m.logger.Info("limits file reloaded", "file", m.opts.File, "rules", len(f.Rules), "in_force", len(m.Set().InForce))
	return nil
}

// ReloadDB rereads the database's rows. During an outage it changes
// nothing: an unreachable database is not an empty one.
func (m *Manager) ReloadDB(ctx context.Context) error {
	if m.opts.DB == nil {
		return nil
	}
	rows, err := m.opts.DB.RuleRows(ctx)
	if err != nil {
		m.stale.Store(true)
		return err
	}
	prices, err := m.readPrices(ctx)
	if err != nil {
		m.stale.Store(true)
		return err
	}
	// Read: a Set that apply refuses is not retried until the rows change.
	m.stale.Store(false)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.update(m.file, rows, prices); err != nil {
		return err
	}
	m.logger.Info("limit rules reloaded from the database", "rows", len(rows), "in_force", len(m.Set().InForce))
	return nil
}

// update makes file and rows the sources in force, if apply takes their
// Set. m.mu is held.
func (m *Manager) update(file *File, rows []Row, prices []PriceRow) error {
	set := m.merge(file, rows, prices)
	if m.apply != nil {
		if err := m.apply(set); err != nil {
			return err
		}
	}
	m.file, m.rows, m.prices = file, rows, prices
	m.set.Store(set)
	return nil
}

// merge merges and logs what did not make it into force, once per
// merge: at start and on every reload.
func (m *Manager) merge(file *File, rows []Row, prices []PriceRow) *Set {
	set := Merge(file, rows)
	for _, err := range set.Skipped {
		m.logger.Warn("limit rule row ignored", "error", err)
	}
	var skipped []error
	set.Prices, skipped = Prices(m.base, file, prices)
	for _, err := range skipped {
		m.logger.Warn("model price row ignored", "error", err)
	}
	set.Skipped = append(set.Skipped, skipped...)
	for _, s := range set.Shadowed {
		r := s.Rule
		m.logger.Info("limit rule shadowed by a rule of the same scope", "rule", r.Source, "by", s.By,
			"limit_type", r.Window.String(), "unit", r.Unit.String(), "user_id", r.UserID, "provider", r.Provider, "model", r.Model)
	}
	return set
}
