package cuda

import (
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/dllm-dev/dllm/kernels"
)

// sizeClass is kernels.PoolClass: a cached block is handed out again for
// the same class only.
func sizeClass(n uintptr) uintptr { return uintptr(kernels.PoolClass(uint64(n))) }

// pool is a caching allocator of device memory: freed blocks are kept by
// size class and handed out again, so a training step allocates nothing
// after the first one. Blocks are reused in stream order: a block freed
// after enqueueing work that reads it can be handed to the next op, which
// runs after that work on the same stream.
type pool struct {
	mu       sync.Mutex
	cached   map[uintptr][]uintptr // class -> free blocks
	blocks   map[uintptr]block     // every block the pool owns
	inUse    uintptr
	reserved uintptr
	allocs   int
	alloc    func(bytes uintptr) (uintptr, error)
	release  func(addr uintptr) error
}

type block struct {
	class uintptr
	free  bool
}

func newPool(alloc func(uintptr) (uintptr, error), release func(uintptr) error) *pool {
	return &pool{cached: map[uintptr][]uintptr{}, blocks: map[uintptr]block{}, alloc: alloc, release: release}
}

// get returns a block of at least n bytes.
func (p *pool) get(n uintptr) (uintptr, error) {
	c := sizeClass(n)
	p.mu.Lock()
	defer p.mu.Unlock()
	if l := p.cached[c]; len(l) > 0 {
		a := l[len(l)-1]
		p.cached[c] = l[:len(l)-1]
		p.blocks[a] = block{class: c}
		p.inUse += c
		return a, nil
	}
	a, err := p.alloc(c)
	if err != nil && isOutOfMemory(err) && p.reserved > p.inUse {
		if terr := p.trimLocked(); terr != nil {
			return 0, terr
		}
		a, err = p.alloc(c)
	}
	if err != nil {
		return 0, err
	}
	p.blocks[a] = block{class: c}
	p.allocs++
	p.reserved += c
	p.inUse += c
	return a, nil
}

// put gives a block back for reuse.
func (p *pool) put(a uintptr) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, ok := p.blocks[a]
	switch {
	case !ok:
		return fmt.Errorf("cuda: Free of %#x, which is not the start of a buffer this backend allocated", a)
	case b.free:
		return fmt.Errorf("cuda: buffer %#x freed twice", a)
	}
	p.blocks[a] = block{class: b.class, free: true}
	p.cached[b.class] = append(p.cached[b.class], a)
	p.inUse -= b.class
	return nil
}

// trim returns every cached block to the device.
func (p *pool) trim() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.trimLocked()
}

func (p *pool) trimLocked() error {
	classes := make([]uintptr, 0, len(p.cached))
	for c := range p.cached {
		classes = append(classes, c)
	}
	sort.Slice(classes, func(i, j int) bool { return classes[i] < classes[j] })
	var first error
	for _, c := range classes {
		for _, a := range p.cached[c] {
			if err := p.release(a); err != nil && first == nil {
				first = err
			}
			delete(p.blocks, a)
			p.reserved -= c
		}
		delete(p.cached, c)
	}
	return first
}

// MemStats describes the device memory of a backend.
type MemStats struct {
	// Allocs counts device allocations (cuMemAlloc) so far: it stays put
	// once a training loop runs in steady state.
	Allocs int
	// Reserved is the bytes held from the device, InUse those handed out.
	Reserved, InUse int64
}

func (p *pool) stats() MemStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return MemStats{Allocs: p.allocs, Reserved: int64(p.reserved), InUse: int64(p.inUse)}
}

func isOutOfMemory(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == errOutOfMemory
}
