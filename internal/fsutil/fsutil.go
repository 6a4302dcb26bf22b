// Package fsutil holds the file-system step that the spool and the dead
// letter both need for durability, so that neither imports the other.
package fsutil

import "os"

// SyncDir fsyncs dir, which makes the creation, deletion or rename of a
// file in it durable: syncing the file itself does not.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
