package rules

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// WatchOptions tune how Manager.Run follows the limits file. The zero
// value is serve's: a 200 ms debounce, a look every minute besides the
// watcher, or every 10 s without one.
type WatchOptions struct {
	// Debounce is how long the file's directory must be quiet after an
	// event before the file is read: an editor's or kubelet's write is
	// several events. Default 200 ms.
	Debounce time.Duration
	// Poll is how often the file is looked at (its modification time and
	// size, then the hash of its content) when no watcher could be
	// created. Default 10 s. With a watcher, the look runs every
	// max(Poll, 1 minute) as well, for the changes a watcher does not
	// report (the watched directory replaced, a file system that sends no
	// events).
	Poll time.Duration
	// NewWatcher creates the watcher; default fsnotify.NewWatcher. An
	// error makes Run poll.
	NewWatcher func() (*fsnotify.Watcher, error)
}

func (o WatchOptions) withDefaults() WatchOptions {
	if o.Debounce <= 0 {
		o.Debounce = 200 * time.Millisecond
	}
	if o.Poll <= 0 {
		o.Poll = 10 * time.Second
	}
	if o.NewWatcher == nil {
		o.NewWatcher = fsnotify.NewWatcher
	}
	return o
}

// readFile reads the limits file at path and hashes its content.
func readFile(path string) (data []byte, sum string, err error) {
	data, err = os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("cannot read limits file: %w", err)
	}
	h := sha256.Sum256(data)
	return data, hex.EncodeToString(h[:]), nil
}

// concerns tells whether an event on name, in the directory of the limits
// file at path, may have changed the file: the file itself (written,
// created by an editor's rename, removed), or a name of the ConfigMap
// volume's machinery (..data, ..data_tmp, the ..<timestamp> directories).
// Other files in the directory do not hold the debounce off.
func concerns(name, path string) bool {
	base := filepath.Base(name)
	return base == filepath.Base(path) || strings.HasPrefix(base, "..")
}

// fileStamp is what a poll compares before it reads the file.
type fileStamp struct {
	mod  time.Time
	size int64
	err  string
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path) // through the symlinks, to the content
	if err != nil {
		return fileStamp{err: err.Error()}
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size()}
}

// watchFile reloads the limits file when its content changes, until ctx
// ends, as SIGHUP does: same validation, same logs, a file that does not
// load leaves the rules in force. It watches the file's directory, not
// the file: a Kubernetes ConfigMap volume updates the file by swapping
// the directory's ..data symlink (the file is a symlink through it), which
// a watch on the file never reports. Events are debounced, and the
// content's hash decides: an event that changed nothing reloads nothing.
// Without a watcher it polls.
func (m *Manager) watchFile(ctx context.Context) {
	opts := m.opts.Watch.withDefaults()
	path := m.opts.File
	var events <-chan fsnotify.Event
	var errs <-chan error
	every := opts.Poll
	w, err := opts.NewWatcher()
	if err == nil {
		if err = w.Add(filepath.Dir(path)); err != nil {
			w.Close()
		}
	}
	if err != nil {
		m.logger.Warn("cannot watch the limits file's directory; polling it for changes", "file", path, "every", opts.Poll.String(), "error", err)
	} else {
		defer w.Close()
		events, errs = w.Events, w.Errors
		every = max(opts.Poll, time.Minute)
	}
	poll := time.NewTicker(every)
	defer poll.Stop()
	// A change between New's read and the watch's start counts: the file
	// is looked at once the debounce has passed, not at once, which could
	// read it half-written (truncated) if a write is under way.
	debounce := time.NewTimer(opts.Debounce)
	stamp := stampOf(path)
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
			} else if concerns(ev.Name, path) {
				debounce.Reset(opts.Debounce)
			}
			continue
		case err, ok := <-errs:
			if !ok {
				errs = nil
			} else {
				m.logger.Warn("limits file watcher error", "file", path, "error", err)
			}
			continue
		case <-poll.C:
			s := stampOf(path)
			if s == stamp {
				continue
			}
			stamp = s
		case <-debounce.C:
			stamp = stampOf(path)
		}
		if ctx.Err() == nil {
			m.reloadFileLogged("file change", true)
		}
	}
}
