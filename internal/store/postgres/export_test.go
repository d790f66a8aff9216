package postgres

// ClassifyForTest exposes classify to the external tests.
var ClassifyForTest = classify

// UnsafeServerForTest exposes unsafeServer to the external tests.
var UnsafeServerForTest = unsafeServer
