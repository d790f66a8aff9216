package client

// FromStatusForTest exposes the status mapping to the external tests.
var FromStatusForTest = fromStatus
