	movq	%rdx, %rax
	vpbroadcastd	(%rcx,%rdx,4), %zmm4
	salq	$6, %rax
	vmovdqu64	(%rdi,%rax), %zmm1
	vmovdqu64	(%rsi,%rax), %zmm0
	movq	(%rsp), %rax
	vdpbf16ps	%zmm1, %zmm4, %zmm3
	vdpbf16ps	%zmm0, %zmm4, %zmm30
	vpbroadcastd	(%r14,%rdx,4), %zmm4
	vdpbf16ps	%zmm1, %zmm4, %zmm2
	vdpbf16ps	%zmm0, %zmm4, %zmm29
	vpbroadcastd	(%rax,%rdx,4), %zmm4
	movq	-16(%rsp), %rax
	vdpbf16ps	%zmm1, %zmm4, %zmm28
	vdpbf16ps	%zmm0, %zmm4, %zmm27
	vpbroadcastd	(%rax,%rdx,4), %zmm4
	movq	-8(%rsp), %rax
	vdpbf16ps	%zmm1, %zmm4, %zmm26
	vdpbf16ps	%zmm0, %zmm4, %zmm25
	vpbroadcastd	(%rax,%rdx,4), %zmm4
	movq	-24(%rsp), %rax
	vdpbf16ps	%zmm1, %zmm4, %zmm24
	vdpbf16ps	%zmm0, %zmm4, %zmm23
	vpbroadcastd	(%r11,%rdx,4), %zmm4
	vdpbf16ps	%zmm1, %zmm4, %zmm22
	vdpbf16ps	%zmm0, %zmm4, %zmm21
	vpbroadcastd	(%r10,%rdx,4), %zmm4
	vdpbf16ps	%zmm1, %zmm4, %zmm20
	vdpbf16ps	%zmm0, %zmm4, %zmm19
	vpbroadcastd	(%r9,%rdx,4), %zmm4
	vdpbf16ps	%zmm1, %zmm4, %zmm18
	vdpbf16ps	%zmm0, %zmm4, %zmm17
	vpbroadcastd	(%r8,%rdx,4), %zmm4
	vdpbf16ps	%zmm1, %zmm4, %zmm16
	vdpbf16ps	%zmm0, %zmm4, %zmm15
	vpbroadcastd	(%rax,%rdx,4), %zmm4
	movq	-32(%rsp), %rax
	vdpbf16ps	%zmm1, %zmm4, %zmm14
	vdpbf16ps	%zmm0, %zmm4, %zmm13
	vpbroadcastd	(%r12,%rdx,4), %zmm4
	vdpbf16ps	%zmm1, %zmm4, %zmm12
	vdpbf16ps	%zmm0, %zmm4, %zmm11
	vpbroadcastd	0(%r13,%rdx,4), %zmm4
	vdpbf16ps	%zmm1, %zmm4, %zmm10
	vdpbf16ps	%zmm0, %zmm4, %zmm9
	vpbroadcastd	(%r15,%rdx,4), %zmm4
	vdpbf16ps	%zmm1, %zmm4, %zmm8
	vdpbf16ps	%zmm0, %zmm4, %zmm7
	vpbroadcastd	(%rax,%rdx,4), %zmm4
	addq	$1, %rdx
	vdpbf16ps	%zmm1, %zmm4, %zmm6
	vdpbf16ps	%zmm0, %zmm4, %zmm5
	cmpq	%rdx, %rbx
	jg	.L3
