import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output = rs.band_sieve(
    input_bands=["$DATA/lc/classes.tif"],
    size=3,
    output_path="$DATA/out/new_virtual_output_sieve",
    connected=False,
    prefix="sieve_",
    virtual_output=True,
)
print(output.check)
print(output.paths)
rs.close()
