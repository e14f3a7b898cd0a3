package corpus

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
)

// The cache of a tokenized stream. Key: SHA-256 of the format version, the
// tokenizer's Fingerprint (tokenizer.json and tokenizer_config.json bytes,
// added tokens, BOS/EOS/pad ids), the options that change tokens (document
// separator, JSONL field, BOS per document, EOS) and, for each input file in
// order, its kind and the SHA-256 of its contents. Contents rather than
// paths and mtimes: a copied or touched corpus still hits, an edited one
// never does; hashing runs at disk speed, far faster than tokenizing.
//
// File: "DLLMTOKS" | uint32 version | uint32 header length | header JSON |
// int64 document starts | int32 tokens | uint32 CRC-32 (IEEE) of all before,
// little-endian. Written to a temporary file and renamed.

const (
	cacheMagic   = "DLLMTOKS"
	cacheVersion = 1
)

type cacheHeader struct {
	Key       string `json:"key"`
	Documents int64  `json:"documents"`
	Tokens    int64  `json:"tokens"`
}

func (t *tokenizing) cacheKey(files []inputFile) (string, error) {
	h := sha256.New()
	bos := -1
	if t.tok.AddsBOS() {
		bos = t.tok.BOS()
	}
	fmt.Fprintf(h, "dllm-corpus-v%d\x00%s\x00sep=%s\x00field=%q\x00bos=%d\x00eos=%d\x00files=%d\x00",
		cacheVersion, t.tok.Fingerprint(), t.opt.Separator, t.opt.TextField, bos, t.tok.EOS(), len(files))
	for _, f := range files {
		fh, err := os.Open(f.path)
		if err != nil {
			return "", fmt.Errorf("corpus: %v", err)
		}
		c := sha256.New()
		_, err = io.Copy(c, fh)
		fh.Close()
		if err != nil {
			return "", fmt.Errorf("corpus: reading %s: %v", f.path, err)
		}
		fmt.Fprintf(h, "%s %x\x00", f.kind, c.Sum(nil))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func cachePath(dir, key string) string {
	return filepath.Join(dir, "tokens-"+key[:20]+".bin")
}

func readCache(path, key string) (*stream, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	bad := fmt.Errorf("corpus: cache %s is damaged", path)
	if len(data) < 20 || string(data[:8]) != cacheMagic || binary.LittleEndian.Uint32(data[8:]) != cacheVersion {
		return nil, bad
	}
	if crc32.ChecksumIEEE(data[:len(data)-4]) != binary.LittleEndian.Uint32(data[len(data)-4:]) {
		return nil, bad
	}
	hl := int(binary.LittleEndian.Uint32(data[12:]))
	if 16+hl > len(data)-4 {
		return nil, bad
	}
	var h cacheHeader
	if err := json.Unmarshal(data[16:16+hl], &h); err != nil || h.Key != key {
		return nil, bad
	}
	body := data[16+hl : len(data)-4]
	if h.Documents < 0 || h.Tokens < 0 || int64(len(body)) != 8*h.Documents+4*h.Tokens {
		return nil, bad
	}
	s := &stream{starts: make([]int64, h.Documents), tokens: make([]int32, h.Tokens)}
	for i := range s.starts {
		s.starts[i] = int64(binary.LittleEndian.Uint64(body[8*i:]))
	}
	body = body[8*h.Documents:]
	for i := range s.tokens {
		s.tokens[i] = int32(binary.LittleEndian.Uint32(body[4*i:]))
	}
	return s, nil
}

func writeCache(path, key string, s *stream) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("corpus: cache: %v", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("corpus: cache: %v", err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("corpus: writing cache %s: %v", path, err)
	}
	crc := crc32.NewIEEE()
	w := bufio.NewWriterSize(io.MultiWriter(f, crc), 1<<20)
	hdr, _ := json.Marshal(cacheHeader{Key: key, Documents: int64(len(s.starts)), Tokens: int64(len(s.tokens))})
	var pre bytes.Buffer
	pre.WriteString(cacheMagic)
	binary.Write(&pre, binary.LittleEndian, uint32(cacheVersion))
	binary.Write(&pre, binary.LittleEndian, uint32(len(hdr)))
	pre.Write(hdr)
	w.Write(pre.Bytes())
	buf := make([]byte, 0, 1<<16)
	for _, v := range s.starts {
		buf = binary.LittleEndian.AppendUint64(buf, uint64(v))
		if len(buf) >= 1<<16-8 {
			w.Write(buf)
			buf = buf[:0]
		}
	}
	for _, v := range s.tokens {
		buf = binary.LittleEndian.AppendUint32(buf, uint32(v))
		if len(buf) >= 1<<16-8 {
			w.Write(buf)
			buf = buf[:0]
		}
	}
	w.Write(buf)
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	if err := binary.Write(f, binary.LittleEndian, crc.Sum32()); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("corpus: writing cache %s: %v", path, err)
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("corpus: writing cache %s: %v", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("corpus: writing cache %s: %v", path, err)
	}
	return nil
}
