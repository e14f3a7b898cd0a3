//go:build amd64 && !purego

#include "textflag.h"

// Constants of expf (see expf.go), as float32 bits; the last is the int 127.
DATA expc<>+0(SB)/4, $0x42b17217 // hi 88.72283
DATA expc<>+4(SB)/4, $0xc2aeac4f // lo -87.33654
DATA expc<>+8(SB)/4, $0x3fb8aa3b // log2e 1.4426950408889634
DATA expc<>+12(SB)/4, $0x3f000000 // half 0.5
DATA expc<>+16(SB)/4, $0x3f318000 // c1 0.693359375
DATA expc<>+20(SB)/4, $0xb95e8083 // c2 -0.00021219444
DATA expc<>+24(SB)/4, $0x39506967 // p0 0.000198756915
DATA expc<>+28(SB)/4, $0x3ab743ce // p1 0.0013981999507
DATA expc<>+32(SB)/4, $0x3c088908 // p2 0.0083334519073
DATA expc<>+36(SB)/4, $0x3d2aa9c1 // p3 0.041665795894
DATA expc<>+40(SB)/4, $0x3e2aaaaa // p4 0.16666665459
DATA expc<>+44(SB)/4, $0x3f000000 // p5 0.50000001201
DATA expc<>+48(SB)/4, $0x3f800000 // one 1.0
DATA expc<>+52(SB)/4, $127
GLOBL expc<>(SB), RODATA|NOPTR, $56

// func expShiftAVX512(dst, src *float32, n int, shift float32, sum *[16]float32)
//
// dst[i] = exp(src[i] - shift) for n (a multiple of 16) values, -Inf and
// anything below exp's range giving 0; the lane sums are added to *sum.
TEXT ·expShiftAVX512(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	VBROADCASTSS shift+24(FP), Z16
	MOVQ sum+32(FP), DX
	VBROADCASTSS expc<>+0(SB), Z17
	VBROADCASTSS expc<>+4(SB), Z18
	VBROADCASTSS expc<>+8(SB), Z19
	VBROADCASTSS expc<>+12(SB), Z20
	VBROADCASTSS expc<>+16(SB), Z21
	VBROADCASTSS expc<>+20(SB), Z22
	VBROADCASTSS expc<>+24(SB), Z23
	VBROADCASTSS expc<>+28(SB), Z24
	VBROADCASTSS expc<>+32(SB), Z25
	VBROADCASTSS expc<>+36(SB), Z26
	VBROADCASTSS expc<>+40(SB), Z27
	VBROADCASTSS expc<>+44(SB), Z28
	VBROADCASTSS expc<>+48(SB), Z29
	VPBROADCASTD expc<>+52(SB), Z30
	VMOVUPS (DX), Z31
	SHRQ $4, CX
	JZ done
loop:
	VMOVUPS (SI), Z0
	VSUBPS Z16, Z0, Z0
	VCMPPS $1, Z18, Z0, K1
	VMINPS Z17, Z0, Z0
	VMAXPS Z18, Z0, Z0
	VMULPS Z19, Z0, Z1
	VADDPS Z20, Z1, Z1
	VRNDSCALEPS $9, Z1, Z1
	VFNMADD231PS Z21, Z1, Z0
	VFNMADD231PS Z22, Z1, Z0
	VMULPS Z0, Z0, Z3
	VMOVAPS Z23, Z4
	VFMADD213PS Z24, Z0, Z4
	VFMADD213PS Z25, Z0, Z4
	VFMADD213PS Z26, Z0, Z4
	VFMADD213PS Z27, Z0, Z4
	VFMADD213PS Z28, Z0, Z4
	VFMADD213PS Z0, Z3, Z4
	VADDPS Z29, Z4, Z4
	VCVTTPS2DQ Z1, Z5
	VPADDD Z30, Z5, Z5
	VPSLLD $23, Z5, Z5
	VMULPS Z5, Z4, Z4
	VXORPS Z4, Z4, K1, Z4
	VMOVUPS Z4, (DI)
	VADDPS Z4, Z31, Z31
	ADDQ $64, SI
	ADDQ $64, DI
	DECQ CX
	JNZ loop
done:
	VMOVUPS Z31, (DX)
	VZEROUPPER
	RET

// func scaleMaxAVX512(x *float32, n int, scale float32, mx *[16]float32)
//
// x[i] *= scale for n (a multiple of 16) values; the lane maxima of the
// results are merged into *mx.
TEXT ·scaleMaxAVX512(SB), NOSPLIT, $0-32
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	VBROADCASTSS scale+16(FP), Z1
	MOVQ mx+24(FP), DX
	VMOVUPS (DX), Z2
	SHRQ $4, CX
	JZ smdone
smloop:
	VMULPS (SI), Z1, Z0
	VMOVUPS Z0, (SI)
	VMAXPS Z0, Z2, Z2
	ADDQ $64, SI
	DECQ CX
	JNZ smloop
smdone:
	VMOVUPS Z2, (DX)
	VZEROUPPER
	RET
