package postgres

// ClassifyForTest exposes classify to the external tests.
var ClassifyForTest = classify
