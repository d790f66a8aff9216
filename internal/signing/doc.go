// Package signing implements SignerService, RotationService and AuditService,
// and the audit middleware that writes exactly one entry per RPC.
//
// Handlers resolve keys through a Keyring (a cache over the store and the key
// provider) and report what they resolved to the middleware through the
// request context; they never write audit entries themselves. Errors are
// signerr sentinels; the middleware turns them into codes and reasons with
// signerr.Classify, the one table.
package signing
