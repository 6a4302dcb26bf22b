package loadgen

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// metronome ticks every interval on a timerfd read through Go's network
// poller: the kernel wakes the poller when a tick is due, to the
// microsecond, whatever timeout the runtime sleeps with.
type metronome struct {
	// f is the timerfd, pollable because it is non-blocking.
	f *os.File
	// stopOnDone unhooks the wake-up on ctx's end.
	stopOnDone func() bool
	buf        [8]byte
}

// newMetronome starts a metronome whose n-th tick is due at start + n*interval.
func newMetronome(ctx context.Context, interval time.Duration) (*metronome, time.Time, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("cannot create a timer: %w", err)
	}
	f := os.NewFile(uintptr(fd), "timerfd")
	every := unix.NsecToTimespec(int64(interval))
	start := time.Now()
	if err := unix.TimerfdSettime(fd, 0, &unix.ItimerSpec{Interval: every, Value: every}, nil); err != nil {
		f.Close()
		return nil, time.Time{}, fmt.Errorf("cannot start a timer: %w", err)
	}
	// A read blocked on the timer returns at once when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Now()) })
	return &metronome{f: f, stopOnDone: stop}, start, nil
}

// wait blocks until a tick is due and returns how many came since the last wait.
func (m *metronome) wait() (int, error) {
	if _, err := io.ReadFull(m.f, m.buf[:]); err != nil {
		return 0, err
	}
	return int(binary.NativeEndian.Uint64(m.buf[:])), nil
}

func (m *metronome) close() {
	m.stopOnDone()
	m.f.Close()
}
