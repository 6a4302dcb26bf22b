package redisquota

import (
	"encoding/json"
	"os"
	"path/filepath"
)

// A sidecar restarted on its data directory is the same replica to its
// spool: the records it accepted before are there. Whether Redis counted
// them depends on whether Redis kept its state meanwhile, which the
// epoch tells: the store keeps the epoch it knew, and the live replicas'
// count for its fail mode before it reaches Redis, in Options.StateFile.

// savedState is StateFile's content.
type savedState struct {
	// Epoch is the epoch this replica last knew.
	Epoch string `json:"epoch"`
	// Replicas is the number of live replicas it last saw.
	Replicas int64 `json:"replicas"`
}

// SetRestarted registers what a sidecar restarted on its data directory
// does when it first reaches a Redis that kept the state it knew:
// charge the records of its spool again, which Redis charges once (a
// record its predecessor accepted while Redis was out of reach, or
// stored without having charged it, is then counted).
func (s *Store) SetRestarted(fn func() error) { s.restarted.Store(&fn) }

// loadState reads StateFile, if any.
func (s *Store) loadState() {
	if s.opts.StateFile == "" {
		return
	}
	b, err := os.ReadFile(s.opts.StateFile)
	if err != nil {
		return
	}
	var st savedState
	if json.Unmarshal(b, &st) != nil {
		return
	}
	s.savedEpoch = st.Epoch
	if st.Replicas > 0 {
		s.replicas.Store(st.Replicas)
	}
	s.saved = st
}

// saveState writes StateFile when what it holds changed.
func (s *Store) saveState() {
	if s.opts.StateFile == "" {
		return
	}
	st := savedState{Replicas: s.replicas.Load()}
	if p := s.epoch.Load(); p != nil {
		st.Epoch = *p
	}
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	if st == s.saved {
		return
	}
	b, _ := json.Marshal(st)
	tmp := s.opts.StateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		s.opts.Logger.Warn("cannot save the quota state", "file", s.opts.StateFile, "error", err)
		return
	}
	if err := os.Rename(tmp, s.opts.StateFile); err != nil {
		s.opts.Logger.Warn("cannot save the quota state", "file", s.opts.StateFile, "error", err)
		return
	}
	if d, err := os.Open(filepath.Dir(s.opts.StateFile)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	s.saved = st
}
