import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output = rs.band_sieve(
    input_bands=["$DATA/lc/classes.tif"],
    size=40,
    output_path="$DATA/out/sieve_extent_list",
    connected=False,
    prefix="sieve_",
    extent_list=[500104, 4599797, 500496, 4599503],
)
print(output.check)
print(output.paths)
rs.close()
