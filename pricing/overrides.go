package pricing

// Overrides returns the table's overrides, in the order they are tried.
func (t *Table) Overrides() []Override {
	out := make([]Override, len(t.overrides))
	for i := range t.overrides {
		out[i] = t.overrides[i].Override
	}
	return out
}
