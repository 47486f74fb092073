import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
catalog = rs.bandset_catalog()
catalog.create_bandset(["$DATA/lc/classes.tif"], bandset_number=1)
catalog.create_bandset(["$DATA/lc/classes2.tif"], bandset_number=2)
output = rs.band_sieve(
    input_bands=2,
    size=5,
    output_path="$DATA/out/bandset_catalog_argument",
    connected=True,
    bandset_catalog=catalog,
)
print(output.check)
print(output.paths)
rs.close()
