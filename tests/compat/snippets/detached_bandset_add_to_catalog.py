import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
catalog = rs.bandset_catalog()
bandset = rs.bandset.create(
    ["classes2.tif", "classes.tif"], wavelengths=[2, 1], root_directory="$DATA/lc"
)
catalog.add_bandset(bandset, bandset_number=2)
output = rs.band_erosion(
    input_bands=catalog.get(2),
    value_list=[7],
    size=1,
    output_path="$DATA/out/detached_bandset_add_to_catalog",
)
print(output.check)
print(output.paths)
print(catalog.get_bandset_count())
print(catalog.get(2).get_paths())
rs.close()
