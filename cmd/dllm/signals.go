package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// onSignals returns a context that SIGINT, SIGTERM or SIGHUP cancels (the
// run then saves a checkpoint) and a function naming the signal; a second
// signal exits at once with its code. stop ends the handling.
func onSignals(log io.Writer) (ctx context.Context, got func() os.Signal, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	var mu sync.Mutex
	var first os.Signal
	go func() {
		select {
		case s := <-ch:
			mu.Lock()
			first = s
			mu.Unlock()
			fmt.Fprintf(log, "\ndllm: %v: saving a checkpoint (send it again to stop at once)\n", s)
			cancel()
		case <-done:
			return
		}
		select {
		case s := <-ch:
			fmt.Fprintf(log, "dllm: %v, a second signal: stopping now, without a new checkpoint\n", s)
			os.Exit(signalCode(s))
		case <-done:
		}
	}()
	got = func() os.Signal {
		mu.Lock()
		defer mu.Unlock()
		return first
	}
	stop = func() {
		signal.Stop(ch)
		close(done)
		cancel()
	}
	return ctx, got, stop
}

// signalCode is the shell's exit status for a process a signal ended: 128
// plus the signal number (SIGINT 130, SIGTERM 143, SIGHUP 129).
func signalCode(s os.Signal) int {
	if n, ok := s.(syscall.Signal); ok {
		return 128 + int(n)
	}
	return 130
}
