package keyring

// CachedForTest reports how many entries each keyring map holds.
func (r *Keyring) CachedForTest() (active, published, byID, loaded int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.active), len(r.published), len(r.byID), len(r.loaded)
}
