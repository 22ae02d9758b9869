import torch,time
import torch.nn.functional as F
torch.set_num_threads(2)
B,L,BS,kvh,d=32,304,16,3,64
nb=L//BS; NB=B*nb+10
def bench(f,n=30):
    f(); ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return min(ts)*1e3, sorted(ts)[n//2]*1e3
for dt in (torch.float32, torch.bfloat16):
    kv=torch.randn(2,NB,BS,kvh,d).to(dt)
    tables=torch.randperm(NB)[:B*nb].view(B,nb)
    q=torch.randn(B,9,1,d).to(dt)
    mask=(torch.arange(L)[None,:]<300)[:,None,None,:].expand(B,1,1,L)
    g1=lambda: kv[:,tables]
    kflat=kv.view(2,NB,-1)
    g2=lambda: (kflat[0].index_select(0,tables.flatten()), kflat[1].index_select(0,tables.flatten()))
    g3=lambda: kflat.index_select(1,tables.flatten())
    print(dt,"adv idx",bench(g1),"index_select x2",bench(g2),"index_select dim1",bench(g3))
    pages=kv[:,tables].view(2,B,L,kvh,d).transpose(2,3)
    s=lambda: F.scaled_dot_product_attention(q,pages[0],pages[1],attn_mask=mask,scale=0.125,enable_gqa=True)
    pc=pages.contiguous()
    s2=lambda: F.scaled_dot_product_attention(q,pc[0],pc[1],attn_mask=mask,scale=0.125,enable_gqa=True)
    qg=q.view(B,kvh,3,d)
    s3=lambda: F.scaled_dot_product_attention(qg,pages[0],pages[1],attn_mask=mask,scale=0.125)
    # matmul path
    def s4():
        k=pages[0]; v=pages[1]
        sc=torch.matmul(qg, k.transpose(-1,-2)).float()*0.125
        sc=sc.masked_fill(~mask, float('-inf')).softmax(-1)
        return torch.matmul(sc.to(dt), v)
    print("  sdpa strided",bench(s),"sdpa contig",bench(s2),"sdpa folded",bench(s3),"matmul",bench(s4))
