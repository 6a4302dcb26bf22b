package rules

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"strings"
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
	// Watch tunes how Run follows changes to File; the zero value is
	// what serve uses.
	Watch WatchOptions
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
	// fileSum is the SHA-256 of the limits file's content last read, or
	// the error that read it not: a change is a different value. m.mu.
	fileSum string
	// fileFailures counts the file's reloads that failed; fileOK tells
	// whether the last one succeeded, and fileLoaded is when the rules
	// in force were last loaded from it (Unix nanoseconds).
	fileFailures atomic.Uint64
	fileOK       atomic.Bool
	fileLoaded   atomic.Int64
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
		data, sum, err := readFile(opts.File)
		if err != nil {
			return nil, err
		}
		if m.file, err = ParseFile(opts.File, data); err != nil {
			return nil, err
		}
		m.fileSum = sum
		m.fileOK.Store(true)
		m.fileLoaded.Store(time.Now().UnixNano())
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

// Run reloads the limits file on SIGHUP and when its content changes (see
// watchFile), and the database's rows when they change, handing each new
// Set to apply, until ctx ends. A file that does not load, or a Set that
// apply refuses, is logged and the one in force stays.
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
	if m.opts.File != "" {
		go m.watchFile(ctx)
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
		m.reloadFileLogged("SIGHUP", false)
	}
}

// reloadFileLogged reloads the limits file, if its content changed since
// it was last read or always when !onlyChanged, and logs a failure.
func (m *Manager) reloadFileLogged(trigger string, onlyChanged bool) {
	if err := m.reloadFile(trigger, onlyChanged); err != nil {
		m.logger.Error("limits file not reloaded; the previous rules stay in force", "file", m.opts.File, "trigger", trigger, "error", err)
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

// ReloadFile rereads the limits file, as SIGHUP does. A file that does
// not load changes nothing.
func (m *Manager) ReloadFile() error { return m.reloadFile("SIGHUP", false) }

// reloadFile rereads the limits file, unless onlyChanged and its content
// (or the error reading it) is the same as last time: a change that does
// not load is then reported once, not at every look. It counts a failure
// in FileReloads.
func (m *Manager) reloadFile(trigger string, onlyChanged bool) error {
	if m.opts.File == "" {
		return ErrNoFile
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	data, sum, err := readFile(m.opts.File)
	if err != nil {
		sum = err.Error()
	}
	if onlyChanged && sum == m.fileSum {
		return nil
	}
	m.fileSum = sum
	var f *File
	if err == nil {
		if f, err = ParseFile(m.opts.File, data); err == nil {
			err = m.update(f, m.rows, m.prices)
		}
	}
	if err != nil {
		m.fileFailures.Add(1)
		m.fileOK.Store(false)
		return err
	}
	m.fileOK.Store(true)
	m.fileLoaded.Store(time.Now().UnixNano())
	m.logger.Info("limits file reloaded", "file", m.opts.File, "trigger", trigger, "rules", len(f.Rules), "in_force", len(m.Set().InForce))
	return nil
}

// FileReloads tells how reloads of the limits file went: the number that
// failed, whether the last one succeeded (the load at start counts), and
// when the rules in force were last loaded from it. Zero values without
// a file.
func (m *Manager) FileReloads() (failures uint64, lastOK bool, loaded time.Time) {
	if m.opts.File == "" {
		return 0, false, time.Time{}
	}
	return m.fileFailures.Load(), m.fileOK.Load(), time.Unix(0, m.fileLoaded.Load())
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
		// A seeded default yielding to the limits file is the expected
		// case, not news: logged only at debug.
		level := slog.LevelInfo
		if strings.HasSuffix(r.Source, "(seeded default)") {
			level = slog.LevelDebug
		}
		m.logger.Log(context.Background(), level, "limit rule shadowed by a rule of the same scope", "rule", r.Source, "by", s.By,
			"limit_type", r.Window.String(), "unit", r.Unit.String(), "user_id", r.UserID, "provider", r.Provider, "model", r.Model)
	}
	return set
}
