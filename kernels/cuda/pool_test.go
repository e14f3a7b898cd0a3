package cuda

import (
	"errors"
	"testing"
)

func TestSizeClass(t *testing.T) {
	prev := uintptr(0)
	for n := uintptr(0); n < 1<<34; n += 1 + n/7 {
		c := sizeClass(n)
		if c < n || c < 256 {
			t.Fatalf("class %d for %d bytes", c, n)
		}
		if sizeClass(c) != c {
			t.Fatalf("class %d of %d is not a fixed point", c, n)
		}
		if c < prev {
			t.Fatalf("classes not monotone at %d", n)
		}
		prev = c
		if n > 1<<20 && float64(c) > 1.25*float64(n) {
			t.Fatalf("class %d wastes more than a quarter of %d", c, n)
		}
		if n > 64<<20 && (c-n >= 2<<20 || c%(2<<20) != 0) {
			t.Fatalf("class %d for %d bytes: a large block is not rounded to 2 MiB", c, n)
		}
		if n > 0 && n <= 1<<20 && c-n >= 256 {
			t.Fatalf("class %d for %d: more than 255 bytes of padding", c, n)
		}
	}
	for _, c := range []struct{ n, want uintptr }{{1, 256}, {257, 512}, {1 << 20, 1 << 20},
		{1<<20 + 1, 1<<20 + 1<<18}, {64 << 20, 64 << 20}, {64<<20 + 1, 66 << 20}, {3 << 29, 3 << 29}, {(3 << 29) + 1, 3<<29 + 2<<20},
		{14_140_000_000, 14_141_095_936}} {
		if got := sizeClass(c.n); got != c.want {
			t.Errorf("sizeClass(%d) = %d, want %d", c.n, got, c.want)
		}
	}
}

type fakeDevice struct {
	next    uintptr
	live    map[uintptr]uintptr
	allocs  int
	limit   uintptr // bytes before out of memory
	inUse   uintptr
	freed   int
	failOOM bool
}

func (f *fakeDevice) alloc(n uintptr) (uintptr, error) {
	if f.limit > 0 && f.inUse+n > f.limit {
		return 0, &Error{Call: "cuMemAlloc_v2", Name: "CUDA_ERROR_OUT_OF_MEMORY", Code: errOutOfMemory}
	}
	f.next += 1 << 32
	f.live[f.next] = n
	f.allocs++
	f.inUse += n
	return f.next, nil
}

func (f *fakeDevice) release(a uintptr) error {
	n, ok := f.live[a]
	if !ok {
		return errors.New("bad free")
	}
	delete(f.live, a)
	f.inUse -= n
	f.freed++
	return nil
}

func TestPoolReuse(t *testing.T) {
	dev := &fakeDevice{live: map[uintptr]uintptr{}}
	p := newPool(dev.alloc, dev.release)
	// A "step": the same sizes every time, freed at the end.
	step := func() {
		var got []uintptr
		for _, n := range []uintptr{4, 1000, 1000, 5 << 20, 123457, 300<<20 + 12345} {
			a, err := p.get(n)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, a)
		}
		for _, a := range got {
			if err := p.put(a); err != nil {
				t.Fatal(err)
			}
		}
	}
	step()
	first := dev.allocs
	for i := 0; i < 5; i++ {
		step()
	}
	if dev.allocs != first {
		t.Errorf("steps after the first allocated: %d then %d", first, dev.allocs)
	}
	if s := p.stats(); s.InUse != 0 || s.Allocs != first || s.Reserved <= 0 {
		t.Errorf("stats %+v", s)
	}
	// A block of a nearby size reuses the same class.
	a, _ := p.get(5<<20 - 100)
	if dev.allocs != first {
		t.Error("a request in the same class allocated")
	}
	if err := p.put(a); err != nil {
		t.Fatal(err)
	}
	// A large block is as large as asked, to 2 MiB, and cached as well.
	if b, _ := p.get(300<<20 + 1<<20); dev.allocs != first || dev.live[b] != 302<<20 {
		t.Errorf("a large request of the same 2 MiB class: %d allocations (%d before), block of %d bytes", dev.allocs, first, dev.live[b])
	} else {
		p.put(b)
	}
	if err := p.put(a); err == nil {
		t.Error("double free not reported")
	}
	if err := p.put(12345); err == nil {
		t.Error("free of a foreign address not reported")
	}
}

func TestPoolOutOfMemoryTrims(t *testing.T) {
	dev := &fakeDevice{live: map[uintptr]uintptr{}, limit: 3 << 20}
	p := newPool(dev.alloc, dev.release)
	a, err := p.get(2 << 20)
	if err != nil {
		t.Fatal(err)
	}
	p.put(a)
	// 2 MiB are cached; 2 more do not fit until the cache is returned.
	if _, err := p.get(1<<21 + 1<<19); err != nil {
		t.Fatalf("the pool did not trim its cache on out of memory: %v", err)
	}
	if dev.freed != 1 {
		t.Errorf("%d blocks returned to the device, want 1", dev.freed)
	}
	if _, err := p.get(4 << 20); !isOutOfMemory(err) {
		t.Errorf("want out of memory, got %v", err)
	}
}
