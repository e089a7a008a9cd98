//go:build !race

package tun_test

const raceEnabled = false
