package keyring_test

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// moveScope rewrites key id's record in a bbolt file to scope to, as an
// attacker with write access to the file would (the scope index included).
func moveScope(tx *bolt.Tx, id, to string) error {
	keys := tx.Bucket([]byte("keys"))
	raw := keys.Get([]byte(id))
	if raw == nil {
		return fmt.Errorf("no key %s", id)
	}
	var rec map[string]any
	if err := json.Unmarshal(raw, &rec); err != nil {
		return err
	}
	from := rec["scope"].(string)
	rec["scope"] = to
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := keys.Put([]byte(id), b); err != nil {
		return err
	}
	scopes := tx.Bucket([]byte("scopes"))
	if err := scopes.Bucket([]byte(from)).Delete([]byte(id)); err != nil {
		return err
	}
	sb, err := scopes.CreateBucketIfNotExists([]byte(to))
	if err != nil {
		return err
	}
	return sb.Put([]byte(id), nil)
}
