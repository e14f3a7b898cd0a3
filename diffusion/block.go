package diffusion

// TwoStream lays out a noised batch for block diffusion (BD3-LM, LLaDA 2.0):
// each row becomes [xt ; x0], 2L tokens with positions repeated and document
// ids copied, attended under kernels.BlockDiffusion. The scored rows b.Rows
// (indices into the L-long rows, as Score made them) are moved into the
// 2L-long rows: onto the noisy half, except that with shift the first
// position of a block is read from the clean copy of the previous position,
// which sees exactly the finished blocks, as it will when sampling.
// ids, pos, docsOut and rows have room for B*2L entries; docsIn (B*L) may be
// nil.
func (o *Objective) TwoStream(b *Batch, block int, ids, pos, docsIn, docsOut, rows []int32) {
	L := b.L
	for r := 0; r < b.B; r++ {
		src, dst := r*L, r*2*L
		copy(ids[dst:dst+L], b.XT[src:src+L])
		copy(ids[dst+L:dst+2*L], b.X0[src:src+L])
		for i := 0; i < L; i++ {
			pos[dst+i], pos[dst+L+i] = int32(i), int32(i)
			var d int32
			if docsIn != nil {
				d = docsIn[src+i]
			}
			docsOut[dst+i], docsOut[dst+L+i] = d, d
		}
	}
	for k := 0; k < b.NMasked; k++ {
		row := int(b.Rows[k])
		r, j := row/L, row%L
		out := r*2*L + j
		if o.Shift && (j+1)%block == 0 {
			out += L
		}
		rows[k] = int32(out)
	}
}
